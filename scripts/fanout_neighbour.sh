#!/usr/bin/env bash
# What one organization's fan-out costs another's ingest (BENCHMARKS.md, "Issue #17, eleventh
# sitting"). Loopback only.
# usage: scripts/fanout_neighbour.sh SERVER_BINARY WITH_A(0|1) [DATABASE_URL]
#   starts SERVER_BINARY on 127.0.0.1:18182 without delivery workers (a fresh SQLite file
#   unless DATABASE_URL is given), runs tenant B (loadgen, 16 connections, single events,
#   10 s) and, with WITH_A=1, after 4 s tenant A: an organization with 50 endpoints sending
#   6 batches of 1 000 events at once (enterprise's default burst is 6 000 events). Prints B's
#   rate and latency, and A's (A then waits 30 s for deliveries that no worker makes: the
#   round takes about 40 s). LOADGEN picks the load generator binary.
set -uo pipefail
server=$1; shift
loadgen=${LOADGEN:-./target/release/examples/loadgen}
dir=$(mktemp -d)
DATABASE_URL=${2:-sqlite://$dir/t.db} TRIGGERS_LISTEN=127.0.0.1:18182 RUST_LOG=warn TRIGGERS_WORKERS=0 \
  TRIGGERS_WEBHOOK_ALLOW=127.0.0.0/8 TRIGGERS_TIER_LIMITS=enterprise=1000000000 \
  "$server" >/dev/null 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $dir' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18182/health && break; sleep 0.2; done
"$loadgen" --url http://127.0.0.1:18182 --connections 16 --duration 10s > $dir/b.out &
b=$!
if [ "$1" = 1 ]; then
  sleep 4
  timeout 40 "$loadgen" --url http://127.0.0.1:18182 --webhook --endpoints 50 --batch 1000 --connections 6 --requests 6 --warmup 0s > $dir/a.out 2>&1
fi
wait $b
echo "B: $(grep -o 'rate=[0-9]* req/s' $dir/b.out) $(grep latency $dir/b.out)"
if [ "$1" = 1 ]; then echo "A: $(grep latency $dir/a.out)"; fi
