#!/usr/bin/env bash
# Measures issue 11 (BENCHMARKS.md, "Hostile edge"). Loopback only.
# usage: scripts/rss_pages.sh SERVER_BINARY PORT  -> prints the server's peak RSS (MiB) after 8 concurrent
# largest inbox pages over 200 events of 250 KiB.
set -euo pipefail
bin=$1; port=$2; dir=$(mktemp -d)
TRIGGERS_LISTEN=127.0.0.1:$port DATABASE_URL=sqlite://$dir/rss.db TRIGGERS_WORKERS=0 \
  TRIGGERS_TIER_LIMITS=enterprise=1000000 RUST_LOG=off "$bin" & pid=$!
trap 'kill $pid 2>/dev/null; rm -rf $dir' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/health && break; sleep 0.2; done
key=$(curl -s -H 'content-type: application/json' -d '{"organization_name":"big","tier":"enterprise"}' \
  http://127.0.0.1:$port/api/keys/generate | sed 's/.*"api_key":"\([^"]*\)".*/\1/')
python3 -c 'import json;print(json.dumps({"type":"big.event","payload":"x"*(250*1024-2)}))' > $dir/ev.json
for i in $(seq 200); do
  curl -s -o /dev/null -H "x-api-key: $key" -H 'content-type: application/json' --data-binary @$dir/ev.json \
    http://127.0.0.1:$port/api/events
done
before=$(awk '/VmHWM/{print int($2/1024)}' /proc/$pid/status)
for i in $(seq 8); do
  curl -s -o $dir/page$i.json -H "x-api-key: $key" "http://127.0.0.1:$port/api/inbox?limit=1000" &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
sleep 0.5
after=$(awk '/VmHWM/{print int($2/1024)}' /proc/$pid/status)
n=$(python3 -c "import json;print(len(json.load(open('$dir/page1.json'))['events']))")
echo "peak_rss_mib_before=$before peak_rss_mib_after=$after events_in_page=$n"
