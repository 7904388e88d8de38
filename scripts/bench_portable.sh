#!/usr/bin/env bash
# The portable build beside a native one and beside PyTorch, in one run:
# batch norm (forward and forward+backward, one replica) on the four shapes,
# and the SyncMaster round (2 and 4 threads, 1 and 256 channels).
#   build/        the default build: portable, CPU kernels dispatched at run time
#   build-native/ SYNCBN_NATIVE_ARCH=ON: everything compiled with -march=native
# The two builds alternate --rounds times per shape (this VM's speed drifts
# by 10-30% over a minute), and the summary gives, per row, the median over
# the rounds of each build's time and of the per-round ratio default/native.
#   scripts/bench_portable.sh [--rounds 5] [--shapes AxBx...,...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5
shapes="32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32"
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --shapes) shapes=$2; shift 2 ;;
    *) echo "bench_portable.sh: unknown flag '$1' (expected --rounds N or --shapes LIST)" >&2; exit 2 ;;
  esac
done
scripts/build.sh build --target bench_batchnorm --target bench_sync_master >/dev/null
scripts/build.sh build-native --target bench_batchnorm --target bench_sync_master -DSYNCBN_NATIVE_ARCH=ON \
  -DSYNCBN_BUILD_TESTS=OFF -DSYNCBN_BUILD_EXAMPLES=OFF -DSYNCBN_CUDA=OFF >/dev/null
have_torch=0
/usr/bin/python3 -c 'import torch' 2>/dev/null && have_torch=1
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); $(g++ --version | head -n1)"
build/bench/bench_batchnorm --shapes 1x1x1x2 --min-ms 1 --reps 1 --no-pairs | grep '^# CPU' | sed 's/^# /# default build: /'
echo "# native build: -march=native (SYNCBN_NATIVE_ARCH)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
IFS=',' read -ra list <<<"$shapes"
for shape in "${list[@]}"; do
  if [[ $have_torch == 1 ]]; then
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 \
      /usr/bin/python3 bench/torch_batchnorm.py --shapes "$shape" --min-ms 100 --reps 3 | grep -v '^#' | grep -v '^shape' |
      sed 's/^/torch /' | tee -a "$log"
  fi
  for ((r = 1; r <= rounds; ++r)); do
    for b in build build-native; do
      "$b/bench/bench_batchnorm" --shapes "$shape" --no-pairs --min-ms 100 --reps 3 | grep -v '^#' | grep -v '^shape' |
        sed "s/^/$b $r /" >>"$log"
    done
  done
done
for ((r = 1; r <= rounds; ++r)); do
  for b in build build-native; do
    "$b/bench/bench_sync_master" --threads 2,4 --channels 1,256 --policies adaptive --rounds 50000 --reps 3 |
      awk -v b="$b" -v r="$r" '$3 == "adaptive" { printf "%s %s round-K%s-C%s comm %s\n", b, r, $1, $2, $4 / 1000 }' >>"$log"
  done
done
py=/usr/bin/python3
command -v "$py" >/dev/null 2>&1 || py=python3
echo "# the Python original's master/slave round (bench/python_original_comm.py):"
"$py" bench/python_original_comm.py --rounds 5000 --reps 3 | sed 's/^/#   /'
echo "# medians over $rounds alternating rounds; time in ms; ratio = default / native, median of the per-round ratios"
awk '
  $1 == "torch" { torch[$2 " " $3 " " $4] = $5; next }
  $1 == "build" || $1 == "build-native" {
    shape = $3; what = $4 " " $5; if ($5 == "") what = $4
    key = shape " " what
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    t[$1, key, $2] = $(NF - 2); if ($4 == "comm") t[$1, key, $2] = $5
  }
  function median(a, m,   i, j, tmp) {
    for (i = 1; i <= m; ++i) for (j = i + 1; j <= m; ++j) if (a[j] < a[i]) { tmp = a[i]; a[i] = a[j]; a[j] = tmp }
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    printf "%-16s %-14s %10s %10s %8s %12s %12s\n", "shape", "what", "default", "native", "ratio", "torch NCHW", "torch CL"
    for (i = 1; i <= n; ++i) {
      key = order[i]; split(key, parts, " ")
      m = 0; delete d; delete v; delete q
      for (r = 1; (("build", key, r) in t); ++r) { m++; d[m] = t["build", key, r]; v[m] = t["build-native", key, r]; q[m] = d[m] / v[m] }
      what = parts[2] (parts[3] != "" ? " " parts[3] : "")
      tn = ""; tc = ""
      if (parts[2] == "fwd" || parts[2] == "fwd+bwd") { tn = torch[parts[1] " " parts[2] " NCHW"]; tc = torch[parts[1] " " parts[2] " channels-last"] }
      printf "%-16s %-14s %10.4f %10.4f %8.3f %12s %12s\n", parts[1], what, median(d, m), median(v, m), median(q, m), tn, tc
    }
  }' "$log"
