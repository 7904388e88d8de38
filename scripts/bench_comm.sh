#!/usr/bin/env bash
# The comm benchmark with its comparison in the same run: syncbn's SyncMaster
# (adaptive, blocking, pure-spin and fixed spin-then-yield waits) and the pure-Python master/slave
# design of the original SynchronizedBatchNorm (torch tensors when Debian's
# python3-torch is installed). Prints both tables.
#   scripts/bench_comm.sh [--rounds N] [--reps R] ...   (flags go to the C++ harness)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh build --target bench_sync_master >/dev/null
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
build/bench/bench_sync_master --policies adaptive,blocking,spin,fixed "$@"
py=/usr/bin/python3
command -v "$py" >/dev/null 2>&1 || py=python3
"$py" bench/python_original_comm.py --rounds 10000 --reps 3
