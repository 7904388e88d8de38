#!/usr/bin/env bash
# The DataParallel benchmark with its comparison in the same run: syncbn's
# training step for K = 1, 2, 4 CPU devices and PyTorch's CPU step of the same
# model at 1 and 2 threads (Debian's python3-torch, when installed).
#   scripts/bench_data_parallel.sh [flags for bench_data_parallel...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh build --target bench_data_parallel >/dev/null
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
build/bench/bench_data_parallel "$@"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  /usr/bin/python3 bench/torch_mlp_step.py
else
  echo "# PyTorch comparison skipped: Debian's python3-torch is not installed"
fi
