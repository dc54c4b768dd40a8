#!/usr/bin/env bash
# Measures issue 11 (BENCHMARKS.md, "Hostile edge"). Loopback only.
# usage: scripts/ingest64.sh SERVER_BINARY PORT -> one 64-connection 10 s round on a fresh SQLite db
set -euo pipefail
bin=$1; port=$2; dir=$(mktemp -d)
TRIGGERS_LISTEN=127.0.0.1:$port DATABASE_URL=sqlite://$dir/t.db TRIGGERS_TIER_LIMITS=enterprise=1000000000 \
  RUST_LOG=warn "$bin" >/dev/null 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $dir' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/health && break; sleep 0.2; done
"${LOADGEN:-./target/release/examples/loadgen}" --url http://127.0.0.1:$port --connections 64 --duration 10s
