#!/usr/bin/env python3
"""What the dedup table costs SQLite's log per event, for today's key and a compact one
(BENCHMARKS.md, "Issues #17 and #13, fourteenth sitting"). Local files only.

usage: scripts/dedup_frames.py [random]

Writes 200 000 dedup entries in commits of 28 (what 64-connection ingest commits at once)
into a fresh WAL database with a 4 MiB page cache, checkpointing every 2 000 commits, and
prints the log frames (4 KiB pages written) per entry for (a) today's table, unique on
(organization id, dedup id), and (b) a table whose only index is a 64-bit hash of the two,
the id itself kept in the row. Ids follow the load generator (64 connections, each counting
up), or are random UUIDs with `random`.
"""
import hashlib
import os
import sqlite3
import struct
import sys
import uuid

RANDOM = sys.argv[1:] == ["random"]
FRAME = 4096 + 24
TODAY = """CREATE TABLE dedup (seq INTEGER PRIMARY KEY, org_id BLOB NOT NULL,
    dedup_id TEXT NOT NULL, event_id BLOB NOT NULL, event_type TEXT NOT NULL,
    created_at INTEGER NOT NULL, UNIQUE (org_id, dedup_id))"""
COMPACT = """CREATE TABLE dedup (seq INTEGER PRIMARY KEY, key INTEGER NOT NULL,
    org_id BLOB NOT NULL, dedup_id TEXT NOT NULL, event_id BLOB NOT NULL,
    event_type TEXT NOT NULL, created_at INTEGER NOT NULL)"""


def remove(path):
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def log_frames(path):
    return (os.path.getsize(path + "-wal") - 32) // FRAME


def run(compact, n=200_000, per_commit=28):
    path = f"/tmp/dedup_frames_{os.getpid()}_{compact}.db"
    remove(path)
    c = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=OFF", "wal_autocheckpoint=0",
                   "cache_size=-4096"):
        c.execute(f"PRAGMA {pragma}")
    c.execute(COMPACT if compact else TODAY)
    if compact:
        c.execute("CREATE INDEX dedup_key ON dedup (key)")
    org = uuid.uuid4().bytes

    def key(dedup_id):
        digest = hashlib.blake2b(org + dedup_id.encode(), digest_size=8).digest()
        return struct.unpack("<q", digest)[0]

    counters = [0] * 64
    frames = commits = i = 0
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    while i < n:
        c.execute("BEGIN")
        for _ in range(per_commit):
            conn = i % 64
            counters[conn] += 1
            d = str(uuid.uuid4()) if RANDOM else f"1765100000000-{conn}-{counters[conn]}-0"
            row = (org, d, uuid.uuid4().bytes, "load.test", i)
            if compact:
                c.execute("INSERT INTO dedup (key, org_id, dedup_id, event_id, event_type,"
                          " created_at) VALUES (?, ?, ?, ?, ?, ?)", (key(d), *row))
            else:
                c.execute("INSERT INTO dedup (org_id, dedup_id, event_id, event_type,"
                          " created_at) VALUES (?, ?, ?, ?, ?)", row)
            i += 1
        c.execute("COMMIT")
        commits += 1
        if commits % 2000 == 0:
            frames += log_frames(path)
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    frames += log_frames(path)
    pages = os.path.getsize(path) // 4096
    print(f"compact={compact}: frames per entry={frames / n:.2f} (index and table), "
          f"database pages={pages}")
    c.close()
    remove(path)


run(False)
run(True)
