#!/usr/bin/env bash
# What one load round writes into SQLite's write-ahead log (BENCHMARKS.md, "Issue #17, eighth
# sitting"). Loopback only.
# usage: scripts/wal_frames.sh SERVER_BINARY PORT [LOADGEN ARGS…]
#   starts SERVER_BINARY on 127.0.0.1:PORT with a fresh SQLite database, holds a read
#   transaction open on it (so no checkpoint can reuse the log: every frame of the round stays
#   in it), runs `loadgen --webhook --connections 16 --duration 4s` (extra arguments replace
#   those), kills the server with SIGKILL (a clean stop would checkpoint and delete the log)
#   and prints the log's frames (4 KiB pages written), commits and events, per event and per
#   commit, then frames per b-tree.
# The per-b-tree split is approximate: a page is named after the b-tree that holds it at the
# end (SQLite's `dbstat`), and pages freed by deletes (deliveries, their indexes) may have
# belonged to another b-tree when they were written. The totals are exact.
# Needs python3 with the sqlite3 module (and its dbstat table). LOADGEN picks the load
# generator binary (default ./target/release/examples/loadgen).
set -euo pipefail
bin=$1; port=$2; shift 2; dir=$(mktemp -d)
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--webhook --connections 16 --duration 4s)
DATABASE_URL=sqlite://$dir/t.db TRIGGERS_LISTEN=127.0.0.1:$port RUST_LOG=warn \
  TRIGGERS_WEBHOOK_ALLOW=127.0.0.0/8 TRIGGERS_TIER_LIMITS=enterprise=1000000000 \
  "$bin" >/dev/null 2>&1 & pid=$!
reader=""
cleanup() {
  kill -9 $pid 2>/dev/null || true
  [ -z "$reader" ] || kill $reader 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/health && break; sleep 0.2; done
python3 - "$dir" <<'EOF' & reader=$!
import sqlite3, sys, time
d = sys.argv[1]
c = sqlite3.connect(d + "/t.db", isolation_level=None)
c.execute("BEGIN")
c.execute("SELECT count(*) FROM sqlite_schema").fetchone()
open(d + "/pinned", "w").close()
time.sleep(600)
EOF
for _ in $(seq 100); do [ -f $dir/pinned ] && break; sleep 0.1; done
[ -f $dir/pinned ] || { echo "the reader did not start" >&2; exit 1; }
"${LOADGEN:-./target/release/examples/loadgen}" --url http://127.0.0.1:$port "${args[@]}" > $dir/out
head -1 $dir/out
kill -9 $pid; wait $pid 2>/dev/null || true
kill $reader; wait $reader 2>/dev/null || true; reader=""
cp $dir/t.db-wal $dir/round.wal
python3 - "$dir" <<'EOF'
import collections, sqlite3, struct, sys
d = sys.argv[1]
wal = open(d + "/round.wal", "rb").read()
page_size = struct.unpack(">I", wal[8:12])[0]
salt = wal[16:24]
pages, frames, commits, off = collections.Counter(), 0, 0, 32
while off + 24 + page_size <= len(wal) and wal[off + 8:off + 16] == salt:
    page, commit = struct.unpack(">II", wal[off:off + 8])
    pages[page] += 1
    frames += 1
    commits += commit != 0
    off += 24 + page_size
db = sqlite3.connect(d + "/t.db")  # recovers the log's committed frames
owner = {page: name for name, page in db.execute("SELECT name, pageno FROM dbstat")}
events = db.execute("SELECT count(*) FROM events").fetchone()[0]
if not events or not commits:
    sys.exit("no events or no commits in the log")
print(f"frames={frames} commits={commits} events={events} frames_per_event={frames / events:.2f} "
      f"frames_per_commit={frames / commits:.1f} events_per_commit={events / commits:.2f}")
by_tree = collections.Counter()
for page, n in pages.items():
    by_tree[owner.get(page, "?")] += n
for name, n in by_tree.most_common(20):
    print(f"  {name:34s} {n / events:5.2f} per event {n / commits:5.2f} per commit")
EOF
