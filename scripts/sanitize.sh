#!/usr/bin/env bash
# Builds the CPU code with ThreadSanitizer and with AddressSanitizer +
# UndefinedBehaviorSanitizer (separate build trees) and runs the threaded
# test areas and the data area (the file parsers) under both.
#   scripts/sanitize.sh [thread|address|all]     (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh python3-torch  # torch: the PyTorch interop tests

which=${1:-all}
labels='sync|core|comm|nn|optim|parallel|data'
jobs=$(nproc 2>/dev/null || echo 2)
# ASLR with high entropy breaks the shadow-memory layout of GCC 12's TSan
# ("unexpected memory mapping"); run the tests without address randomisation.
norandom=()
if command -v setarch >/dev/null 2>&1 && setarch "$(uname -m)" -R true 2>/dev/null; then
  norandom=(setarch "$(uname -m)" -R)
fi

run() {  # run <build-dir> <sanitizers>
  local dir=$1 san=$2
  echo "== sanitize: $san ($dir)"
  scripts/build.sh "$dir" -DSYNCBN_SANITIZE="$san" -DSYNCBN_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSYNCBN_BUILD_BENCH=OFF -DSYNCBN_BUILD_EXAMPLES=OFF
  # Under TSan, OpenBLAS stays on the calling thread: its own worker pool
  # synchronizes in code TSan does not see, so its workers' writes to the
  # operands read as races (they did for the larger products of test_gemm).
  (cd "$dir" && if [[ $san == thread ]]; then export OPENBLAS_NUM_THREADS=1; fi &&
     TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
     ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
     "${norandom[@]}" ctest --output-on-failure --parallel "$jobs" -L "$labels")
}

case $which in
  thread) run build-tsan thread ;;
  address) run build-asan address,undefined ;;
  all) run build-tsan thread; run build-asan address,undefined ;;
  *) echo "sanitize.sh: expected thread, address or all, got '$which'" >&2; exit 2 ;;
esac
