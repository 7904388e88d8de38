#!/usr/bin/env bash
# The batch-norm forms benchmark (bench/bench_batchnorm_forms.cpp) with its
# comparison in the same run: for each shape, PyTorch's batch norm and batch
# norm + ReLU, NCHW and channels-last (one thread), then syncbn's plain,
# unfused, fused, in-place and channels-last rows; then the in-place mode's
# memory, one process per mode. glibc's malloc is told to keep large blocks
# so that PyTorch does not pay page faults on every call.
#   scripts/bench_batchnorm_forms.sh [--shapes AxBx...,...] [--rounds 5] [flags for bench_batchnorm_forms...]
set -euo pipefail
cd "$(dirname "$0")/.."
shapes="32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32"
args=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--shapes" ]]; then shapes="$2"; shift 2; else args+=("$1"); shift; fi
done
scripts/build.sh build --target bench_batchnorm_forms >/dev/null
have_torch=0
/usr/bin/python3 -c 'import torch' 2>/dev/null && have_torch=1
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
IFS=',' read -ra list <<<"$shapes"
for shape in "${list[@]}"; do
  if [[ $have_torch == 1 ]]; then
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 \
      /usr/bin/python3 bench/torch_batchnorm.py --shapes "$shape" --relu | grep fwd+bwd
  else
    echo "# PyTorch comparison skipped: Debian's python3-torch is not installed"
  fi
  build/bench/bench_batchnorm_forms --shapes "$shape" "${args[@]}"
done
echo "# memory: ${list[0]}, 4 blocks of [1x1 Conv2d -> batch norm + activation], one process each"
for mode in bn-relu fused inplace; do
  build/bench/bench_batchnorm_forms --memory "$mode" --blocks 4 --shape "${list[0]}"
done
