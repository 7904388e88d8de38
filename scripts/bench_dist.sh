#!/usr/bin/env bash
# Synchronizing batch norm across processes: per layer and training step,
# syncbn's exchange over MPI (bench_dist_exchange: the collectives alone and
# the whole layer with K replica threads per process) beside the collectives
# PyTorch's SyncBatchNorm makes, over Gloo (bench/torch_gloo_exchange.py),
# for P = 2 and 4 processes, in alternating rounds. Processes are not bound
# to cores (--bind-to none), so that a process's replica threads can use
# every core; P = 4 oversubscribes a 2-core machine. Raw rows:
# out/bench_dist.log.
#   scripts/bench_dist.sh [--rounds 3] [--iters 200]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
iters=200
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    *) echo "bench_dist.sh: unknown flag '$1' (expected --rounds N or --iters N)" >&2; exit 2 ;;
  esac
done
scripts/install_deps.sh python3-torch
scripts/build.sh build --target bench_dist_exchange >/dev/null
mkdir -p out
log=out/bench_dist.log
: >"$log"
mpi=(mpiexec --oversubscribe --bind-to none)
[[ $(id -u) -eq 0 ]] && mpi+=(--allow-run-as-root)
for round in $(seq 1 "$rounds"); do
  echo "# round $round of $rounds: load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
  for p in 2 4; do
    "${mpi[@]}" -n "$p" build/bench/bench_dist_exchange --iters "$iters" | tee -a "$log"
    "${mpi[@]}" -n "$p" /usr/bin/python3 bench/torch_gloo_exchange.py --iters "$iters" | tee -a "$log"
  done
done
