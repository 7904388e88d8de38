#!/usr/bin/env bash
# Trains the demo three ways on the same data (same seed, same global batch of
# 16 samples) and plots the three loss curves to docs/images/demo_loss.png:
#   single device, batch 16, per-replica BatchNorm  (whole-batch statistics)
#   8 CPU devices x 2, SyncBatchNorm                (whole-batch statistics, synchronized)
#   8 CPU devices x 2, per-replica BatchNorm         (2-sample statistics)
# Needs gnuplot (installed here if missing, Debian's gnuplot-nox).
#   scripts/plot_demo.sh [--steps N] [--seed N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh gnuplot-nox
scripts/build.sh build --target train_demo >/dev/null
steps=4000
seed=1
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "plot_demo.sh: unknown flag '$1'" >&2; exit 2 ;;
  esac
done
out=build/demo
mkdir -p "$out" docs/images
d8=cpu:0,cpu:1,cpu:2,cpu:3,cpu:4,cpu:5,cpu:6,cpu:7
run() {  # run <name> <flags...>
  local name=$1
  shift
  build/examples/train_demo --steps "$steps" --seed "$seed" --csv "$out/$name.csv" "$@" | tail -n 1 | sed "s/^train_demo:/$name:/"
}
run single --devices cpu:0 --per-device-batch 16 --bn local
run sync --devices "$d8" --per-device-batch 2 --bn sync
run local --devices "$d8" --per-device-batch 2 --bn local
gnuplot <<GNUPLOT
set terminal pngcairo size 900,520 font "DejaVu Sans,11"
set output "docs/images/demo_loss.png"
set datafile separator ","
set key bottom left opaque box
set xlabel "step"
set ylabel "training loss (moving average)"
set title "train\\\\_demo: global batch 16, seed $seed"
set grid
set yrange [0:*]
plot "$out/single.csv" using 1:3 every ::1 with lines lw 3 lc rgb "#1f77b4" title "1 device x 16, BatchNorm", \
     "$out/sync.csv" using 1:3 every ::1 with lines lw 1.5 dt 2 lc rgb "#d62728" title "8 devices x 2, SyncBatchNorm", \
     "$out/local.csv" using 1:3 every ::1 with lines lw 1.5 lc rgb "#2ca02c" title "8 devices x 2, per-replica BatchNorm"
GNUPLOT
echo "plot_demo.sh: wrote docs/images/demo_loss.png"
