#!/usr/bin/env bash
# Trains the ResNet demo three ways on the same images (same seed, same global
# batch of 16, same number of steps) and plots the smoothed training loss and
# the test accuracy to docs/images/resnet_bn.png:
#   8 CPU devices x 2, SyncBatchNorm                 (whole-batch statistics, synchronized)
#   8 CPU devices x 2, per-replica BatchNorm         (2-image statistics)
#   1 device x 16, BatchNorm                         (whole-batch statistics)
# Each run trains on the first steps x 16 training images for one epoch (so
# its cosine schedule ends with the run) and stops at each quarter to be
# tested on the test images in eval mode, then resumes (--save / --resume,
# which continue exactly as one run would).
# Needs gnuplot (installed here if missing, Debian's gnuplot-nox).
#   scripts/plot_resnet.sh [--steps N] [--seed N] [--test-limit N]
# BUILD_DIR (default build) is the build tree to use.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=3000
seed=1
test_limit=10000
number() {  # number <flag> <value> <min> [max]: returns if min <= value <= max, else exits 2 naming the flag
  [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3)) && { [ $# -lt 4 ] || (($2 <= $4)); } && return 0
  echo "plot_resnet.sh: $1: expected an integer >= $3${4:+ and <= $4}, got '$2'" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  [[ $1 == --steps || $1 == --seed || $1 == --test-limit ]] ||
    { echo "plot_resnet.sh: unknown flag '$1', expected --steps, --seed or --test-limit" >&2; exit 2; }
  [ $# -ge 2 ] || { echo "plot_resnet.sh: $1: expected a value, got none" >&2; exit 2; }
  case $1 in
    --steps) number "$1" "$2" 4 3750; steps=$2 ;;  # at most one epoch of the 60,000 training images
    --seed) number "$1" "$2" 0; seed=$2 ;;
    --test-limit) number "$1" "$2" 1; test_limit=$2 ;;
  esac
  shift 2
done
build=${BUILD_DIR:-build}
scripts/install_deps.sh gnuplot-nox
scripts/build.sh "$build" --target resnet_fashion_mnist >/dev/null
out=$build/resnet_bn
mkdir -p "$out" docs/images
rm -f "$out"/*
d8=cpu:0,cpu:1,cpu:2,cpu:3,cpu:4,cpu:5,cpu:6,cpu:7

run() {  # run <name> <flags...>: trains in four quarters, testing after each
  local name=$1
  shift
  local flags=(--epochs 1 --train-limit $((steps * 16)) --seed "$seed" --test-limit "$test_limit" --quiet "$@")
  local resume=() quarter stop start=$SECONDS
  echo "step,test_accuracy" >"$out/$name-test.csv"
  for quarter in 1 2 3 4; do
    stop=$((steps * quarter / 4))
    "$build/examples/resnet_fashion_mnist" "${flags[@]}" "${resume[@]}" --steps "$stop" \
      --save "$out/$name.safetensors" --csv "$out/$name-$quarter.csv" >"$out/$name-$quarter.log"
    resume=(--resume "$out/$name.safetensors")
    sed -n 's/.*test accuracy \([0-9.]*\)%.*/'"$stop"',\1/p' "$out/$name-$quarter.log" >>"$out/$name-test.csv"
  done
  # One table of the steps, with a moving average of the loss (the last
  # 50 steps) for the plot.
  tail -q -n +2 "$out/$name"-[1-4].csv |
    awk -F, '{ loss[NR % 50] = $3; n = NR < 50 ? NR : 50; s = 0; for (i in loss) s += loss[i];
               printf "%s,%s,%.5f\n", $1, $3, s / n }' >"$out/$name-train.csv"
  echo "$name: test accuracy $(tail -n 1 "$out/$name-test.csv" | cut -d, -f2)% after $steps steps ($((SECONDS - start)) s)"
}

run sync --devices "$d8" --per-device-batch 2 --bn sync
run local --devices "$d8" --per-device-batch 2 --bn local
run single --devices cpu:0 --per-device-batch 16 --bn local

gnuplot <<GNUPLOT
set terminal pngcairo size 1100,460 font "DejaVu Sans,11"
set output "docs/images/resnet_bn.png"
set datafile separator ","
set multiplot layout 1,2 title "resnet\\\\_fashion\\\\_mnist: global batch 16, $steps steps, seed $seed"
set grid
set xlabel "step"
set ylabel "training loss (moving average of 50 steps)"
set key top right opaque box
set yrange [0:*]
plot "$out/single-train.csv" using 1:3 with lines lw 3 lc rgb "#1f77b4" title "1 device x 16, BatchNorm", \
     "$out/sync-train.csv" using 1:3 with lines lw 1.5 dt 2 lc rgb "#d62728" title "8 devices x 2, SyncBatchNorm", \
     "$out/local-train.csv" using 1:3 with lines lw 1.5 lc rgb "#2ca02c" title "8 devices x 2, per-replica BatchNorm"
set ylabel "test accuracy (%, eval mode)"
set key bottom right opaque box
set yrange [60:100]
plot "$out/single-test.csv" using 1:2 every ::1 with linespoints lw 3 pt 7 lc rgb "#1f77b4" title "1 device x 16, BatchNorm", \
     "$out/sync-test.csv" using 1:2 every ::1 with linespoints lw 1.5 dt 2 pt 5 lc rgb "#d62728" title "8 devices x 2, SyncBatchNorm", \
     "$out/local-test.csv" using 1:2 every ::1 with linespoints lw 1.5 pt 9 lc rgb "#2ca02c" title "8 devices x 2, per-replica BatchNorm"
unset multiplot
GNUPLOT
echo "plot_resnet.sh: wrote docs/images/resnet_bn.png"
