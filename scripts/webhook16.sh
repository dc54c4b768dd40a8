#!/usr/bin/env bash
# Measures end-to-end delivery to one endpoint (BENCHMARKS.md, "Issue #13, finished"). Loopback only.
# usage: scripts/webhook16.sh SERVER_BINARY PORT [LOADGEN ARGS…]
#   -> one `loadgen --webhook --connections 16 --duration 10s` round on a fresh SQLite db;
#      extra arguments go to loadgen (e.g. `--fifo --connections 1 --duration 3s`).
# LOADGEN picks the load generator binary (default ./target/release/examples/loadgen).
set -euo pipefail
bin=$1; port=$2; shift 2; dir=$(mktemp -d)
TRIGGERS_LISTEN=127.0.0.1:$port DATABASE_URL=sqlite://$dir/t.db RUST_LOG=warn \
  TRIGGERS_WEBHOOK_ALLOW=127.0.0.0/8 TRIGGERS_TIER_LIMITS=enterprise=1000000000 \
  "$bin" >/dev/null 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $dir' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/health && break; sleep 0.2; done
args=(--webhook --connections 16 --duration 10s)
[ $# -gt 0 ] && args=(--webhook "$@")
"${LOADGEN:-./target/release/examples/loadgen}" --url http://127.0.0.1:$port "${args[@]}"
