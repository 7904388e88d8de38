#!/usr/bin/env bash
# The batch-norm benchmark with its comparison in the same run: for each
# shape, PyTorch's CPU batch norm (NCHW and channels-last, one thread) and
# then syncbn's (one replica beside a same-size streaming copy; per-shard and
# synchronized over two), so that the two are timed seconds apart (this VM's
# speed drifts by 10-30% over a minute). glibc's malloc is told to keep large
# blocks so that PyTorch does not pay page faults on every call. Ends with
# syncbn's speed-up over PyTorch per shape (PyTorch's time / syncbn's).
#   scripts/bench_batchnorm.sh [--shapes AxBx...,...] [flags for bench_batchnorm...]
set -euo pipefail
cd "$(dirname "$0")/.."
shapes="32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32"
args=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--shapes" ]]; then shapes="$2"; shift 2; else args+=("$1"); shift; fi
done
scripts/build.sh build --target bench_batchnorm >/dev/null
have_torch=0
/usr/bin/python3 -c 'import torch' 2>/dev/null && have_torch=1
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
IFS=',' read -ra list <<<"$shapes"
for shape in "${list[@]}"; do
  if [[ $have_torch == 1 ]]; then
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 \
      /usr/bin/python3 bench/torch_batchnorm.py --shapes "$shape" | tee -a "$log"
  fi
  build/bench/bench_batchnorm --shapes "$shape" "${args[@]}" | tee -a "$log"
done
if [[ $have_torch == 1 ]]; then
  echo "# speed-up over PyTorch NCHW (and channels-last), same shape, timed seconds apart"
  awk '
    $2 == "fwd" && $3 == "NCHW" { tf[$1] = $4 }
    $2 == "fwd+bwd" && $3 == "NCHW" { tb[$1] = $4 }
    $2 == "fwd" && $3 == "channels-last" { cf[$1] = $4 }
    $2 == "fwd+bwd" && $3 == "channels-last" { cb[$1] = $4 }
    $2 == "fwd" && $3 == "bn-1" { sf[$1] = $4; order[++n] = $1 }
    $2 == "fwd+bwd" && $3 == "bn-1" { sb[$1] = $4 }
    END {
      printf "%-16s %10s %10s %10s %10s\n", "shape", "fwd", "fwd+bwd", "fwd CL", "fwd+bwd CL"
      for (i = 1; i <= n; ++i) {
        s = order[i]
        printf "%-16s %9.2fx %9.2fx", s, tf[s] / sf[s], tb[s] / sb[s]
        if (s in cf) printf " %9.2fx %9.2fx", cf[s] / sf[s], cb[s] / sb[s]
        printf "\n"
      }
    }' "$log"
else
  echo "# PyTorch comparison skipped: Debian's python3-torch is not installed"
fi
