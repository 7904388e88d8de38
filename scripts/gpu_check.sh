#!/usr/bin/env bash
# On a machine with a GPU: builds syncbn with the CUDA backend (Catch2 from
# .deps/, see scripts/vendor_deps.sh, when Debian's is not installed), runs
# the CUDA tests, then the batch-norm benchmark on the GPU beside PyTorch's
# (where PyTorch has CUDA). Everything it prints is also written to OUT_DIR.
#   scripts/gpu_check.sh [OUT_DIR]        (default: out/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/gpu}
mkdir -p "$out"
log() { tee -a "$out/$1"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  nvcc --version | tail -n 2 || true
  # NCCL: where its header and library are, if anywhere (the build finds it
  # through the CUDA toolkit or NCCL_HOME; without it, collectives copy).
  for d in "${NCCL_HOME:-}" /usr/local/cuda /usr; do
    [ -n "$d" ] && ls "$d"/include/nccl.h "$d"/lib*/libnccl.so* 2>/dev/null || true
  done
} 2>&1 | log machine.txt

prefix=()
[ -d .deps ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.deps")
scripts/build.sh build-gpu -DSYNCBN_CUDA=ON "${prefix[@]}" 2>&1 | log build.txt

status=0
(cd build-gpu && ctest --output-on-failure -L cuda) 2>&1 | log ctest_cuda.txt || status=$?

torch_cuda=$(python3 -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
for shape in 32x64x56x56 64x256x14x14 256x1024 8x32x16x32x32; do
  [ "$torch_cuda" = 1 ] && python3 bench/torch_batchnorm.py --device cuda --shapes "$shape" 2>&1 | log bench_batchnorm.txt
  build-gpu/bench/bench_batchnorm --device cuda:0 --shapes "$shape" 2>&1 | log bench_batchnorm.txt || status=1
  # Channels-last and fused activations beside plain batch norm (and PyTorch's batch norm + ReLU).
  [ "$torch_cuda" = 1 ] && python3 bench/torch_batchnorm.py --device cuda --relu --shapes "$shape" 2>&1 | log bench_batchnorm_forms.txt
  build-gpu/bench/bench_batchnorm_forms --device cuda:0 --rounds 3 --shapes "$shape" 2>&1 | log bench_batchnorm_forms.txt || status=1
done
exit "$status"
