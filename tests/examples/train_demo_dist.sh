#!/usr/bin/env bash
# train_demo over P MPI processes x 2 devices must follow the same training
# as one process over 2P devices on the same global batch: every step's loss
# within 1e-4 (the processes' gradients are summed in another order than the
# replicas' are), and both must learn (--check).
#   train_demo_dist.sh <train_demo> <mpiexec> <P> <work dir>
set -euo pipefail
demo=$1 mpiexec=$2 processes=$3 work=$4
rm -rf "$work" && mkdir -p "$work"
common=(--steps 400 --per-device-batch 4 --bn sync --check)
devices=$(seq -s, -f 'cpu:%g' 0 $((2 * processes - 1)))
"$mpiexec" -n "$processes" --oversubscribe "$demo" --dist mpi --devices cpu:0,cpu:1 "${common[@]}" \
  --csv "$work/dist.csv" </dev/null | tr '\r' '\n' | tail -2
"$demo" --devices "$devices" "${common[@]}" --csv "$work/one.csv" | tail -1
awk -F, -v p="$processes" -v d="$devices" '
  NR == FNR { if (FNR > 1) want[FNR] = $2; next }
  FNR > 1 {
    n++
    diff = $2 - want[FNR]; if (diff < 0) diff = -diff
    if (diff > worst) { worst = diff; at = FNR - 1 }
  }
  END {
    if (n != 400) { printf "expected 400 steps in each CSV, got %d\n", n; exit 1 }
    printf "largest loss difference over %d steps: %g (step %d)\n", n, worst, at
    if (worst > 1e-4) { printf "%d processes x 2 devices departed from one process on %s, expected within 1e-4\n", p, d; exit 1 }
  }' "$work/one.csv" "$work/dist.csv"
