#!/usr/bin/env bash
# resnet_fashion_mnist over 2 MPI processes x 2 devices must follow one
# process over 4 devices on the same global batches: every step's loss
# within 1e-4 (the processes' sums run in another order than the replicas'),
# and both print a test accuracy. A tiny run: 512 images, 16 steps.
#   resnet_dist.sh <resnet_fashion_mnist> <mpiexec> <work dir>
set -euo pipefail
demo=$1 mpiexec=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
common=(--per-device-batch 8 --train-limit 512 --test-limit 128 --epochs 1 --widths 8,16 --quiet)
"$mpiexec" -n 2 --oversubscribe "$demo" --dist mpi --devices cpu:0,cpu:1 "${common[@]}" --csv "$work/dist.csv" \
  </dev/null | tail -2
"$demo" --devices cpu:0,cpu:1,cpu:2,cpu:3 "${common[@]}" --csv "$work/one.csv" | tail -2
awk -F, '
  NR == FNR { if (FNR > 1) want[FNR] = $3; next }
  FNR > 1 {
    n++
    diff = $3 - want[FNR]; if (diff < 0) diff = -diff
    if (diff > worst) { worst = diff; at = FNR - 1 }
  }
  END {
    if (n != 16) { printf "expected 16 steps in each CSV, got %d\n", n; exit 1 }
    printf "largest loss difference over %d steps: %g (step %d)\n", n, worst, at
    if (worst > 1e-4) { print "2 processes x 2 devices departed from one process on 4 devices, expected within 1e-4"; exit 1 }
  }' "$work/one.csv" "$work/dist.csv"
