#!/usr/bin/env bash
# The batch-norm benchmark with its comparison in the same run: syncbn's CPU
# batch norm (one replica; per-shard and synchronized over two) beside a
# same-size streaming copy, then PyTorch's CPU batch norm (NCHW and
# channels-last, one thread) on the same shapes, with glibc's malloc told to
# keep large blocks so that PyTorch does not pay page faults on every call.
#   scripts/bench_batchnorm.sh [flags for bench_batchnorm...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh build >/dev/null
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
build/bench/bench_batchnorm "$@"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 \
    /usr/bin/python3 bench/torch_batchnorm.py
else
  echo "# PyTorch comparison skipped: Debian's python3-torch is not installed"
fi
