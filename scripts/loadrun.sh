#!/usr/bin/env bash
# One load round against a fresh server (BENCHMARKS.md, "Issue #17"). Loopback only.
# usage: scripts/loadrun.sh SERVER_BINARY PORT [LOADGEN ARGS…]
#   starts SERVER_BINARY on 127.0.0.1:PORT with a fresh SQLite database (or DATABASE_URL if
#   set, e.g. a fresh PostgreSQL database), waits for /health, runs
#   `loadgen --url http://127.0.0.1:PORT LOADGEN ARGS…` and stops the server.
# LOADGEN picks the load generator binary (default ./target/release/examples/loadgen).
# TRIGGERS_WEBHOOK_ALLOW, if set, replaces the default 127.0.0.0/8 (e.g. 127.0.0.0/8,::1 for
# `--receiver-host localhost`, whose answer holds both).
# TEMPLATE_DB, if set, is a SQLite database file copied in as the fresh database (an aged
# database for a round; BENCHMARKS.md, "Issue #17, seventh sitting").
set -euo pipefail
bin=$1; port=$2; shift 2; dir=$(mktemp -d)
[ -z "${TEMPLATE_DB:-}" ] || cp "$TEMPLATE_DB" "$dir/t.db"
DATABASE_URL=${DATABASE_URL:-sqlite://$dir/t.db} TRIGGERS_LISTEN=127.0.0.1:$port RUST_LOG=warn \
  TRIGGERS_WEBHOOK_ALLOW=${TRIGGERS_WEBHOOK_ALLOW:-127.0.0.0/8} TRIGGERS_TIER_LIMITS=enterprise=1000000000 \
  "$bin" >/dev/null 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $dir' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/health && break; sleep 0.2; done
"${LOADGEN:-./target/release/examples/loadgen}" --url http://127.0.0.1:$port "$@"
