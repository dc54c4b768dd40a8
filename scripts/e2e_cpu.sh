#!/usr/bin/env bash
# End to end with the SQLite writer's cost per delivered event (BENCHMARKS.md, "Issue #17,
# fifth sitting"). Loopback only.
# usage: scripts/e2e_cpu.sh SERVER_BINARY PORT [LOADGEN ARGS…]
#   starts SERVER_BINARY on 127.0.0.1:PORT with a fresh SQLite database, runs
#   `loadgen --webhook --connections 16 --duration 10s` (extra arguments replace the last
#   four) and prints deliveries/s, then the CPU time (user + system, from /proc) of the
#   server's `triggers-sqlite` writer thread and of the whole server per delivered event, in
#   µs, and the share of the machine's CPU time left idle during the run. CPU per event moves
#   less with a busy host than deliveries/s does. A server without a thread of that name (an
#   older build, or PostgreSQL) gets `writer_us_per_delivery=-`.
# LOADGEN picks the load generator binary (default ./target/release/examples/loadgen).
# TEMPLATE_DB, if set, is a SQLite database file copied in as the fresh database (an aged
# database for a round; BENCHMARKS.md, "Issue #17, seventh sitting").
set -euo pipefail
bin=$1; port=$2; shift 2; dir=$(mktemp -d)
[ -z "${TEMPLATE_DB:-}" ] || cp "$TEMPLATE_DB" "$dir/t.db"
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--connections 16 --duration 10s)
DATABASE_URL=sqlite://$dir/t.db TRIGGERS_LISTEN=127.0.0.1:$port RUST_LOG=warn \
  TRIGGERS_WEBHOOK_ALLOW=127.0.0.0/8 TRIGGERS_TIER_LIMITS=enterprise=1000000000 \
  "$bin" >/dev/null 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $dir' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/health && break; sleep 0.2; done
writer=""
for t in /proc/$pid/task/*; do [ "$(cat $t/comm)" = triggers-sqlite ] && writer=$t; done
ticks() { awk '{print $14 + $15}' "$1/stat"; }
idle() { awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
w0=0; [ -z "$writer" ] || w0=$(ticks $writer); p0=$(ticks /proc/$pid); read -r i0 t0 < <(idle)
"${LOADGEN:-./target/release/examples/loadgen}" --url http://127.0.0.1:$port --webhook "${args[@]}" > $dir/out
w1=0; [ -z "$writer" ] || w1=$(ticks $writer); p1=$(ticks /proc/$pid); read -r i1 t1 < <(idle)
n=$(grep -o 'deliveries: [0-9]*' $dir/out | grep -o '[0-9]*')
rate=$(grep -o 'rate=[0-9]* deliveries/s' $dir/out | grep -o '[0-9]*')
hz=$(getconf CLK_TCK)
w="-"; [ -z "$writer" ] || w=$(( (w1 - w0) * 1000000 / hz / n ))
echo "deliveries/s=$rate writer_us_per_delivery=$w server_us_per_delivery=$(( (p1 - p0) * 1000000 / hz / n )) idle_pct=$(( (i1 - i0) * 100 / (t1 - t0) ))"
