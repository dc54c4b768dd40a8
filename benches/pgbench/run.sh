#!/bin/bash
# The PostgreSQL store's claim and fast-path completion statements, run by pgbench without
# the Rust client: what the database alone sustains, and a quick way to try a statement or
# schema change (edit claim_complete.sql or add a migration) before rebuilding the bench.
#
#   benches/pgbench/run.sh [deliveries, default 200000]
#
# Needs psql and pgbench; the server comes from TRIGGERS_TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/postgres). Creates the database triggers_pgbench, applies
# every migration of triggers-store-postgres, queues N events with one delivery each, then
# 8 clients each claim 64 and complete them as delivered until the queue is (nearly) drained.
# Prints deliveries/s. The database is dropped at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=${1:-200000}
url=${TRIGGERS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=triggers_pgbench
dburl="${url%/*}/$db"
psql -q -v ON_ERROR_STOP=1 "$url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
trap 'psql -q "$url" -c "DROP DATABASE IF EXISTS $db"' EXIT
for m in "$here"/../../triggers-store-postgres/migrations/*.sql; do
    psql -q -v ON_ERROR_STOP=1 "$dburl" -f "$m"
done
psql -q -v ON_ERROR_STOP=1 "$dburl" <<'SQL'
INSERT INTO organizations VALUES
    ('00000000-0000-0000-0000-000000000001', 'bench', 'enterprise', '\x01', now());
INSERT INTO endpoints (id, organization_id, url, secret, created_at) VALUES
    ('00000000-0000-0000-0000-0000000000e1', '00000000-0000-0000-0000-000000000001',
     'inproc://bench', 'whsec_x', now());
SQL
psql -q -v ON_ERROR_STOP=1 "$dburl" -v n="$n" -f "$here/fill.sql" -c "VACUUM ANALYZE"
clients=8
per_client=$((n / 64 / clients - 5))
tps=$(pgbench -n -c $clients -j 2 -t $per_client -f "$here/claim_complete.sql" "$dburl" 2>&1 \
    | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
awk -v tps="$tps" 'BEGIN { printf "%.0f deliveries/s (8 clients, claim 64 + complete 64)\n", tps * 64 }'
