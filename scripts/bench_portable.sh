#!/usr/bin/env bash
# The portable build beside a native one and beside PyTorch, in one run:
# batch norm (forward and forward+backward, one replica) on the four shapes,
# and the SyncMaster round (2 and 4 threads, 1 and 256 channels).
#   build/        the default build: portable, CPU kernels dispatched at run time
#   build-native/ SYNCBN_NATIVE_ARCH=ON: everything compiled with -march=native
# The two builds alternate --rounds times per shape, each run short (one
# sample of >= 50 ms per row) and the order flipped every round, so that the
# two runs of a round are well under a second apart (this VM's speed drifts
# by 10-30% within seconds). The summary gives, per row, each build's median
# time, the median and quartiles of the per-round ratios default/native, and
# the ratio of the two builds' best times (noise only ever adds time).
#   scripts/bench_portable.sh [--rounds 21] [--shapes AxBx...,...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=21
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
# The raw rows, one per measurement: "<build> <round> <shape> <what> <time_ms>".
mkdir -p out
log=out/bench_portable.log
: >"$log"
# Turns a benchmark's table rows into raw rows (the "what" words joined by '_').
rows() {  # rows <build> <round>
  awk -v b="$1" -v r="$2" '$1 !~ /^#/ && $1 != "shape" && NF >= 4 {
      what = $2; for (i = 3; i <= NF - 3; ++i) what = what "_" $i
      if (b == "torch") { what = $2; for (i = 3; i <= NF - 2; ++i) what = what "_" $i; print b, r, $1, what, $(NF - 1) }
      else print b, r, $1, what, $(NF - 2)
    }'
}
IFS=',' read -ra list <<<"$shapes"
for shape in "${list[@]}"; do
  if [[ $have_torch == 1 ]]; then
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 \
      /usr/bin/python3 bench/torch_batchnorm.py --shapes "$shape" --min-ms 100 --reps 3 | rows torch 1 >>"$log"
  fi
  for ((r = 1; r <= rounds; ++r)); do
    order=(build build-native)
    ((r % 2 == 0)) && order=(build-native build)
    for b in "${order[@]}"; do
      "$b/bench/bench_batchnorm" --shapes "$shape" --no-pairs --min-ms 50 --reps 1 --warmup 2 | rows "$b" "$r" >>"$log"
    done
  done
done
for ((r = 1; r <= rounds; ++r)); do
  order=(build build-native)
  ((r % 2 == 0)) && order=(build-native build)
  for b in "${order[@]}"; do
    "$b/bench/bench_sync_master" --threads 2,4 --channels 1,256 --policies adaptive --rounds 20000 --reps 1 |
      awk -v b="$b" -v r="$r" '$3 == "adaptive" { printf "%s %s round K=%s,C=%s_(us) %s\n", b, r, $1, $2, $4 }' >>"$log"
  done
done
py=/usr/bin/python3
command -v "$py" >/dev/null 2>&1 || py=python3
echo "# the Python original's master/slave round (bench/python_original_comm.py), for comparison with the round rows:"
"$py" bench/python_original_comm.py --rounds 5000 --reps 3 | sed 's/^/#   /'
echo "# $rounds alternating rounds (raw rows: $log); time in ms (round rows: us per round), median over the rounds;"
echo "# ratio = default / native per round: median [quartiles]; best = ratio of the two builds' fastest rounds;"
echo "# torch: one run per shape (median of 3 samples)"
awk '
  $1 == "torch" { torch[$3 " " $4] = $5; next }
  {
    key = $3 " " $4
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    t[$1 " " key " " $2] = $5
    if ($2 > rounds) rounds = $2
  }
  function median(a, m,   i, j, tmp) {
    for (i = 1; i <= m; ++i) for (j = i + 1; j <= m; ++j) if (a[j] < a[i]) { tmp = a[i]; a[i] = a[j]; a[j] = tmp }
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    printf "%-16s %-16s %9s %9s %7s %15s %6s %10s %10s\n", "shape", "what", "default", "native", "ratio", "[quartiles]", "best", "torch NCHW", "torch CL"
    for (i = 1; i <= n; ++i) {
      split(order[i], parts, " ")
      m = 0; delete d; delete v; delete q
      for (r = 1; r <= rounds; ++r) {
        a = "build " order[i] " " r; b = "build-native " order[i] " " r
        if ((a in t) && (b in t)) { m++; d[m] = t[a]; v[m] = t[b]; q[m] = t[a] / t[b] }
      }
      if (m == 0) continue
      md = median(d, m); mv = median(v, m); mq = median(q, m)
      q1 = q[int((m + 3) / 4)]; q3 = q[m + 1 - int((m + 3) / 4)]
      best = d[1] / v[1]
      what = parts[2]; sub(/_bn-1$/, "", what)
      tn = torch[parts[1] " " what "_NCHW"]; tc = torch[parts[1] " " what "_channels-last"]
      gsub(/_/, " ", what)
      printf "%-16s %-16s %9.4f %9.4f %7.3f   [%.3f, %.3f] %6.3f %10s %10s\n", parts[1], what, md, mv, mq, q1, q3, best, tn, tc
    }
  }' "$log"
