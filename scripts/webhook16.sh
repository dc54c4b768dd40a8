#!/usr/bin/env bash
# Measures end-to-end delivery to one endpoint (BENCHMARKS.md, "Issue #13, finished"). Loopback only.
# usage: scripts/webhook16.sh SERVER_BINARY PORT [LOADGEN ARGS…]
#   -> one `loadgen --webhook --connections 16 --duration 10s` round on a fresh SQLite db;
#      extra arguments replace `--connections 16 --duration 10s` (e.g. `--fifo --connections 1
#      --duration 3s`). A `--webhook` round of scripts/loadrun.sh.
set -euo pipefail
bin=$1; port=$2; shift 2
args=(--connections 16 --duration 10s)
[ $# -gt 0 ] && args=("$@")
exec "$(dirname "$0")/loadrun.sh" "$bin" "$port" --webhook "${args[@]}"
