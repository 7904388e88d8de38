#!/usr/bin/env bash
# The convolutional-network benchmarks with their comparisons, in one run:
#   1. check: syncbn's and PyTorch's ResNet are the same network (the losses
#      of three steps from the same weights and batch agree);
#   2. the ResNet training step (bench_resnet_step: 1, 2, 4 CPU devices with
#      SyncBatchNorm2d, the split, OPENBLAS_NUM_THREADS=1) beside PyTorch's
#      (bench/torch_resnet_step.py, 1 and 2 threads); and the same step
#      channels-last (--layout nhwc, 1 and 2 devices) beside PyTorch's in
#      torch.channels_last;
#   3. the step under OPENBLAS_NUM_THREADS unset, 1 and 2, and 1 with
#      OPENBLAS_CORETYPE=Haswell (OpenBLAS's AVX2 kernels);
#   4. Conv2d alone (bench_conv, OpenBLAS at 1 and 2 threads, and 1 with the
#      AVX2 kernels) beside torch.nn.functional.conv2d (bench/torch_conv.py,
#      1 and 2 threads);
#   5. the library's GEMM beside cblas_sgemm on Linear's products (bench_gemm,
#      the same three OpenBLAS settings).
# Every round runs all of them once, syncbn and PyTorch alternately (the order
# flips every round), so that the figures compared were taken a minute or
# two apart on this shared machine. Each program run also records the CPU
# that other processes used meanwhile ("foreign" cores: the machine's busy
# time from /proc/stat less this script's own, per second of the run), so
# that runs disturbed by other work can be told and left out. The summary
# gives, per row, the median over the rounds of each program's own median
# (over its --reps samples) and, for the row's first figure, its min-max over
# the rounds. Raw rows: out/bench_resnet.log.
#   scripts/bench_resnet.sh [--rounds 3] [--quick] [--summary] [--max-foreign X]
# --quick: one round of short samples (a smoke test, not figures).
# --summary: only print the summary of the existing out/bench_resnet.log.
# --max-foreign X: the summary leaves out the runs during which other
#   processes used more than X cores on average (e.g. 0.1).
# SYNCBN_BUILD_DIR selects the build directory (default build/).
# OpenBLAS picks its kernels for the CPU it runs on; OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE in the caller's environment would override that choice,
# so they are cleared here (the "Haswell" rows set one on purpose).
set -euo pipefail
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
cd "$(dirname "$0")/.."
rounds=3
quick=0
summary_only=0
max_foreign=1e9
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --quick) quick=1; rounds=1; shift ;;
    --summary) summary_only=1; shift ;;
    --max-foreign) max_foreign=$2; shift 2 ;;
    *) echo "bench_resnet.sh: unknown flag '$1' (expected --rounds N, --quick, --summary or --max-foreign X)" >&2
       exit 2 ;;
  esac
done
summarize() {
  echo "# median over the rounds of each program's median; [min-max] over the rounds for the row's first figure"
  awk -v max_foreign="$max_foreign" '
  function median(list,   a, m, i, j, tmp) {
    m = split(list, a, " ")
    for (i = 1; i <= m; ++i) for (j = i + 1; j <= m; ++j) if (a[j] + 0 < a[i] + 0) { tmp = a[i]; a[i] = a[j]; a[j] = tmp }
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  function lo_hi(list,   a, m, i, lo, hi) {
    m = split(list, a, " "); lo = a[1]; hi = a[1]
    for (i = 2; i <= m; ++i) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
    return "[" lo "-" hi "]"
  }
  # First pass: the foreign load of every run.
  FNR == NR { if ($1 == "foreign") { foreign[$2, $3] = $4; if (!($2 in fl)) { fl[$2] = 1; labels[++nl] = $2 }
                                     if ($3 > rounds) rounds = $3 }
              next }
  $1 == "foreign" { next }
  {
    t = $1; k = $2; nkeys[t] = k
    if ($3 == "H") { if (!(t in header)) { header[t] = ""; for (i = 4; i <= NF; ++i) header[t] = header[t] " " $i; tables[++nt] = t }
                     next }
    if ((($4, $3) in foreign) && foreign[$4, $3] + 0 > max_foreign + 0) { dropped[t, $3] = 1; next }
    kept[t, $3] = 1
    if (t == "step" && $7 == "sync") { sync_ms[$5, $6, $3] = $8; if (!($5 in seen_blocks)) { seen_blocks[$5] = 1; blocks[++nb] = $5 } }
    if (t == "torch-step") torch_ms[$5, $6, $3] = $7
    if (t == "step-cl" && $7 == "sync") cl_ms[$5, $6, $3] = $8
    if (t == "torch-step-cl") torch_cl_ms[$5, $6, $3] = $7
    key = ""; for (i = 5; i < 5 + k; ++i) key = key " " $i
    id = t SUBSEP key
    if (!(id in seen)) { seen[id] = 1; rows[t, ++nrows[t]] = key }
    for (i = 5 + k; i <= NF; ++i) vals[id, i - 4 - k] = vals[id, i - 4 - k] " " $i
    if (NF - 4 - k > ncols[id]) ncols[id] = NF - 4 - k
  }
  function summary(list,   a, m, i, lo, hi) {
    m = split(list, a, " ")
    if (m == 0) return "-"
    lo = hi = a[1] + 0
    for (i = 2; i <= m; ++i) { if (a[i] + 0 < lo) lo = a[i] + 0; if (a[i] + 0 > hi) hi = a[i] + 0 }
    return sprintf("%.2f [%.2f-%.2f] (%d)", median(list), lo, hi, m)
  }
  END {
    # Ratios of the step times of one round (syncbn and PyTorch ran in it a
    # minute or so apart), where both runs of the round were kept.
    if (nb > 0) {
      printf "\n## paired ratios of step times, per round: median [min-max] (rounds)\n"
      printf "%-7s %28s %28s %28s\n", "blocks", "K=1 / PyTorch 1 thread", "K=2 / PyTorch 2 threads", "K=1 / K=2"
      for (i = 1; i <= nb; ++i) {
        b = blocks[i]; r1 = r2 = r3 = ""
        for (r = 1; r <= rounds; ++r) {
          if (((b, 1, r) in sync_ms) && ((b, 1, r) in torch_ms)) r1 = r1 " " sync_ms[b, 1, r] / torch_ms[b, 1, r]
          if (((b, 2, r) in sync_ms) && ((b, 2, r) in torch_ms)) r2 = r2 " " sync_ms[b, 2, r] / torch_ms[b, 2, r]
          if (((b, 1, r) in sync_ms) && ((b, 2, r) in sync_ms)) r3 = r3 " " sync_ms[b, 1, r] / sync_ms[b, 2, r]
        }
        printf "%-7s %28s %28s %28s\n", b, summary(r1), summary(r2), summary(r3)
      }
      # Channels-last: against PyTorch in channels_last, and against its
      # NCHW step (the faster of its two layouts on the CPU).
      printf "\n## channels-last step: paired ratios per round: median [min-max] (rounds)\n"
      printf "%-7s %28s %28s %28s %28s\n", "blocks", "K=1 NHWC / PyTorch CL 1", "K=2 NHWC / PyTorch CL 2",
             "K=1 NHWC / PyTorch NCHW 1", "K=2 NHWC / PyTorch NCHW 2"
      for (i = 1; i <= nb; ++i) {
        b = blocks[i]; r1 = r2 = r3 = r4 = ""
        for (r = 1; r <= rounds; ++r) {
          if (((b, 1, r) in cl_ms) && ((b, 1, r) in torch_cl_ms)) r1 = r1 " " cl_ms[b, 1, r] / torch_cl_ms[b, 1, r]
          if (((b, 2, r) in cl_ms) && ((b, 2, r) in torch_cl_ms)) r2 = r2 " " cl_ms[b, 2, r] / torch_cl_ms[b, 2, r]
          if (((b, 1, r) in cl_ms) && ((b, 1, r) in torch_ms)) r3 = r3 " " cl_ms[b, 1, r] / torch_ms[b, 1, r]
          if (((b, 2, r) in cl_ms) && ((b, 2, r) in torch_ms)) r4 = r4 " " cl_ms[b, 2, r] / torch_ms[b, 2, r]
        }
        printf "%-7s %28s %28s %28s %28s\n", b, summary(r1), summary(r2), summary(r3), summary(r4)
      }
    }
    printf "\n## foreign load: cores used by other processes during each run, by round\n%-20s", "run"
    for (r = 1; r <= rounds; ++r) printf " %6s", r
    printf "\n"
    for (i = 1; i <= nl; ++i) {
      printf "%-20s", labels[i]
      for (r = 1; r <= rounds; ++r) printf " %6s", ((labels[i], r) in foreign) ? foreign[labels[i], r] : "-"
      printf "\n"
    }
    for (ti = 1; ti <= nt; ++ti) {
      t = tables[ti]; k = nkeys[t]
      if (nrows[t] == 0) continue
      used = ""; left = ""
      for (r = 1; r <= rounds; ++r) { if ((t, r) in kept) used = used " " r; else if ((t, r) in dropped) left = left " " r }
      print ""; print "## " t " (rounds" used (left != "" ? "; left out:" left : "") ")"
      m = split(header[t], h, " ")
      for (c = 1; c <= k; ++c) width[c] = length(h[c])
      for (ri = 1; ri <= nrows[t]; ++ri) {
        split(rows[t, ri], kv, " ")
        for (c = 1; c <= k; ++c) if (length(kv[c]) > width[c]) width[c] = length(kv[c])
      }
      for (c = 1; c <= m; ++c) {
        if (c <= k) printf("%-" width[c] "s ", h[c]); else printf " %11s", h[c]
        if (c == k + 1) printf " %15s", "[min-max]"
      }
      printf "\n"
      for (ri = 1; ri <= nrows[t]; ++ri) {
        key = rows[t, ri]; id = t SUBSEP key
        split(key, kv, " "); for (c = 1; c <= k; ++c) printf("%-" width[c] "s ", kv[c])
        for (c = 1; c <= ncols[id]; ++c) {
          v = vals[id, c]; split(v, first, " ")
          if (first[1] ~ /^-?[0-9.]+$/) {
            printf " %11s", sprintf("%.4g", median(v))
            if (c == 1) printf " %15s", lo_hi(v)
          } else printf " %11s", first[1]
        }
        printf "\n"
      }
    }
  }' "$log" "$log"
}

log=out/bench_resnet.log
if [[ $summary_only == 1 ]]; then
  summarize
  exit 0
fi
build=${SYNCBN_BUILD_DIR:-build}
scripts/build.sh "$build" --target bench_resnet_step --target bench_conv --target bench_gemm >/dev/null
py=/usr/bin/python3
have_torch=0
"$py" -c 'import torch' 2>/dev/null && have_torch=1

step_flags=(--steps 5 --reps 3 --warmup 2)
blas_flags=(--steps 3 --reps 3 --warmup 1)
conv_flags=(--min-ms 100 --reps 5)
gemm_flags=(--min-ms 50 --reps 5)
if [[ $quick == 1 ]]; then
  step_flags=(--steps 2 --reps 1 --warmup 1)
  blas_flags=(--steps 1 --reps 1 --warmup 1)
  conv_flags=(--min-ms 10 --reps 1)
  gemm_flags=(--min-ms 5 --reps 1)
fi

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); $(g++ --version | head -n1)"
"$build/bench/bench_gemm" --shapes 1x1x1 --min-ms 1 --reps 1 --warmup 0 | grep '^# CPU' | sed 's/threads: \([0-9]*\)/threads (default): \1/'
mkdir -p out
: >"$log"
check=$(mktemp)
trap 'rm -f "$check"' EXIT

# Tags a program's table rows for the summary: "<table> <nkeys> <round> <label> <prefix...> <row>",
# headers as "<table> <nkeys> H <prefix names...> <header>". A table is named
# by $1, and "$1/2", "$1/3"... for a program's second and further kinds of header.
tag() {  # tag <name> <label> <round> <key columns of each kind of header: 3 or 3,2> [prefix key=value...]
  local name=$1 label=$2 round=$3 nkeys=$4
  shift 4
  awk -v n="$name" -v l="$label" -v r="$round" -v keys="$nkeys" -v p="$*" '
    BEGIN { np = split(p, pre, " "); names = ""; values = ""; split(keys, nk, ",")
            for (i = 1; i <= np; ++i) { split(pre[i], kv, "="); names = names kv[1] " "; values = values kv[2] " " } }
    /^#/ || NF == 0 { next }
    $1 == "blocks" || $1 == "shape" {
      if (!($0 in index_of)) index_of[$0] = ++headers
      h = index_of[$0]; t = n (h > 1 ? "/" h : ""); k = nk[h] + np
      print t, k, "H", names $0; next
    }
    t != "" { print t, k, r, l, values $0 }'
}

# Busy CPU ticks of the machine, and those of this script and its children.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
own_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$$/stat"; }
# Runs "$@" and logs "foreign <label> <round> <cores>": the CPU other
# processes used during the run, in cores.
measured() {  # measured <label> <round> command...
  local label=$1 round=$2
  shift 2
  local b0 o0 t0 b1 o1 t1
  b0=$(busy_ticks); o0=$(own_ticks); t0=$(date +%s.%N)
  "$@"
  b1=$(busy_ticks); o1=$(own_ticks); t1=$(date +%s.%N)
  awk -v l="$label" -v r="$round" -v b="$((b1 - b0))" -v o="$((o1 - o0))" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { f = (b - o) / hz / (t1 - t0); printf "foreign %s %s %.2f\n", l, r, f < 0 ? 0 : f }' >>"$log"
}

if [[ $have_torch == 1 ]]; then
  echo "# 1. same network: syncbn's single-device losses and PyTorch's from the same weights and batch"
  OPENBLAS_NUM_THREADS=1 "$build/bench/bench_resnet_step" --write-check "$check" --blocks 2 --devices-list cpu:0 \
    --modes sync --steps 1 --reps 1 --warmup 0 | grep '^# check'
  "$py" bench/torch_resnet_step.py --check "$check" --blocks 2 --threads 1 --steps 1 --reps 1 --warmup 0 --no-split |
    grep '^# check'
else
  echo "# PyTorch comparison skipped: Debian's python3-torch is not installed"
fi

# The runs of one round (r is the round).
# One thread per library call for the step: K = 1 against PyTorch's one
# thread, and K replicas of one thread each (what DataParallel's rule gives
# them) against PyTorch's K.
run_step() { OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$build/bench/bench_resnet_step" "${step_flags[@]}" | tag step step "$r" 3,2 >>"$log"; }
run_step_cl() {
  OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$build/bench/bench_resnet_step" --layout nhwc --modes sync \
    --devices-list "cpu:0|cpu:0,cpu:1" "${step_flags[@]}" | tag step-cl step-cl "$r" 3 >>"$log"
}
run_blas() {  # run_blas <OPENBLAS_NUM_THREADS or unset> <auto or an OPENBLAS_CORETYPE>
  local vars=(-u OPENBLAS_NUM_THREADS)
  [[ $1 != unset ]] && vars+=("OPENBLAS_NUM_THREADS=$1")
  [[ $2 != auto ]] && vars+=("OPENBLAS_CORETYPE=$2")
  env ${vars[@]+"${vars[@]}"} "$build/bench/bench_resnet_step" --modes sync --blocks 2 "${blas_flags[@]}" |
    tag blas "blas-$1-$2" "$r" 3,2 "openblas=$1" "kernels=$2" >>"$log"
}
run_conv() {  # run_conv <threads> <auto or an OPENBLAS_CORETYPE>
  local vars=()
  [[ $2 != auto ]] && vars+=("OPENBLAS_CORETYPE=$2")
  env ${vars[@]+"${vars[@]}"} OMP_NUM_THREADS="$1" "$build/bench/bench_conv" --blas-threads "$1" "${conv_flags[@]}" |
    tag conv "conv-$1-$2" "$r" 1 "threads=$1" "kernels=$2" >>"$log"
}
run_gemm() {  # run_gemm <threads> <auto or an OPENBLAS_CORETYPE>
  local vars=()
  [[ $2 != auto ]] && vars+=("OPENBLAS_CORETYPE=$2")
  env ${vars[@]+"${vars[@]}"} "$build/bench/bench_gemm" --blas-threads "$1" "${gemm_flags[@]}" |
    tag gemm "gemm-$1-$2" "$r" 2 "threads=$1" "kernels=$2" >>"$log"
}
run_torch_step() { "$py" bench/torch_resnet_step.py "${step_flags[@]}" | tag torch-step torch-step "$r" 2 >>"$log"; }
run_torch_step_cl() {
  "$py" bench/torch_resnet_step.py --channels-last --no-split "${step_flags[@]}" |
    tag torch-step-cl torch-step-cl "$r" 2 >>"$log"
}
run_torch_conv() { "$py" bench/torch_conv.py "${conv_flags[@]}" | tag torch-conv torch-conv "$r" 2 >>"$log"; }

for ((r = 1; r <= rounds; ++r)); do
  echo "# round $r of $rounds: $(uptime | sed 's/.*load/load/')"
  order=(syncbn torch)
  ((r % 2 == 0)) && order=(torch syncbn)
  for who in "${order[@]}"; do
    if [[ $who == syncbn ]]; then
      measured step "$r" run_step
      measured step-cl "$r" run_step_cl
      for setting in "unset auto" "1 auto" "2 auto" "1 Haswell"; do
        read -r threads kernels <<<"$setting"
        measured "blas-$threads-$kernels" "$r" run_blas "$threads" "$kernels"
      done
      for setting in "1 auto" "2 auto" "1 Haswell"; do
        read -r threads kernels <<<"$setting"
        measured "conv-$threads-$kernels" "$r" run_conv "$threads" "$kernels"
        measured "gemm-$threads-$kernels" "$r" run_gemm "$threads" "$kernels"
      done
    elif [[ $have_torch == 1 ]]; then
      measured torch-step "$r" run_torch_step
      measured torch-step-cl "$r" run_torch_step_cl
      measured torch-conv "$r" run_torch_conv
    fi
  done
done

summarize
