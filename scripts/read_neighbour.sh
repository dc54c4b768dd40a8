#!/usr/bin/env bash
# What one organization's heavy reading costs another's reads (BENCHMARKS.md, "Fair group
# commit — twelfth sitting"). Loopback only.
# usage: scripts/read_neighbour.sh SERVER_BINARY
#   starts SERVER_BINARY on 127.0.0.1:18183 without delivery workers (a fresh SQLite file, or
#   DATABASE_URL if set), stores 4 000 events of 20 KB for tenant A and 200 small ones for
#   tenant B, then measures B reading `GET /api/inbox?limit=10` on 2 connections for 5 s,
#   alone and while A reads `GET /api/inbox?limit=1000` on ACONN (64) connections.
#   LOADGEN picks the load generator binary.
set -uo pipefail
server=$1; dir=$(mktemp -d); port=18183; L=${LOADGEN:-./target/release/examples/loadgen}
DATABASE_URL=${DATABASE_URL:-sqlite://$dir/t.db} TRIGGERS_LISTEN=127.0.0.1:$port RUST_LOG=warn TRIGGERS_WORKERS=0 \
  TRIGGERS_TIER_LIMITS=enterprise=1000000000 "$server" >/dev/null 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $dir' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/health && break; sleep 0.2; done
key() { curl -s -XPOST http://127.0.0.1:$port/api/keys/generate -H 'content-type: application/json' -d "{\"organization_name\":\"$1\",\"tier\":\"enterprise\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])'; }
KA=$(key a); KB=$(key b)
$L --url http://127.0.0.1:$port --key $KA --requests 4000 --payload-bytes 20000 --connections 16 >/dev/null
$L --url http://127.0.0.1:$port --key $KB --requests 200 >/dev/null
echo "B alone: $($L --url http://127.0.0.1:$port --key $KB --get '/api/inbox?limit=10' --connections 2 --duration 5s | grep -E 'rate|latency' | tr '\n' ' ')"
$L --url http://127.0.0.1:$port --key $KA --get '/api/inbox?limit=1000' --connections ${ACONN:-64} --duration 9s > $dir/a.out &
a=$!
sleep 2
echo "B with A: $($L --url http://127.0.0.1:$port --key $KB --get '/api/inbox?limit=10' --connections 2 --duration 5s | grep -E 'rate|latency' | tr '\n' ' ')"
wait $a
echo "A: $(grep -E 'rate|latency|status' $dir/a.out | tr '\n' ' ')"
