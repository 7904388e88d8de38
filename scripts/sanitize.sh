#!/usr/bin/env bash
# The sanitizer builds, each proving what the plain build cannot
# (docs/testing.md, "What each configuration proves"):
#   thread   GCC with ThreadSanitizer, Debug (build-tsan/): the test cases
#            that run replica threads, a rendezvous or a collective
#            ([threads]); only the binaries that hold them are built.
#   address  Clang with AddressSanitizer + UndefinedBehaviorSanitizer
#            (build-asan/): the libraries, tests and examples compiled by a
#            second compiler with -Werror, and every test but the long
#            training runs, the [levels] cases at every CPU level. Without the
#            benchmarks, which no test runs (the plain build compiles them
#            with -Werror): a minute of the CI's 2 cores.
# Both are CPU-only (SYNCBN_CUDA=OFF), which also exercises the "no CUDA
# backend" errors.
#   scripts/sanitize.sh [thread|address|all] [extra ctest arguments...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/timing.sh

which=${1:-all}
shift || true
case $which in
  thread | address | all) ;;
  *) echo "sanitize.sh: expected thread, address or all, got '$which'" >&2; exit 2 ;;
esac
jobs=$(nproc 2>/dev/null || echo 2)
# ASLR with high entropy breaks the shadow-memory layout of GCC 12's TSan
# ("unexpected memory mapping") and of Clang 14's sanitizers; run the tests
# without address randomisation.
norandom=()
if command -v setarch >/dev/null 2>&1 && setarch "$(uname -m)" -R true 2>/dev/null; then
  norandom=(setarch "$(uname -m)" -R)
fi

thread() {
  timed "tsan: install" scripts/install_deps.sh python3-torch  # torch: the PyTorch interop tests
  echo "== sanitize: thread (build-tsan)"
  # Debug: this is also the project's own unoptimised build, whose objects
  # hold what an optimised build inlines away (the CPU level objects must
  # still export their kernel set only: "core: CPU kernels of level L define
  # symbols of their own namespace only" runs here too).
  # Without the libtorch layer: libtorch's intra-op pool (OpenMP) and its
  # autograd engine synchronize in code TSan does not see, so every torch
  # call reads as a race; the layer's threading is the exchange's, which
  # the other layers' [threads] cases run here. Without oneDNN too, for the
  # same reason: its primitive cache and its OpenMP threads synchronize in
  # libraries TSan does not see (im2col runs the convolutions; the oneDNN
  # engine's own code runs under ASan).
  timed "tsan: build" scripts/build.sh build-tsan -DSYNCBN_SANITIZE=thread -DSYNCBN_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=Debug -DSYNCBN_BUILD_BENCH=OFF -DSYNCBN_BUILD_EXAMPLES=OFF -DSYNCBN_TORCH=OFF \
    -DSYNCBN_DNNL=OFF
  # OpenBLAS stays on the calling thread: its own worker pool synchronizes in
  # code TSan does not see, so its workers' writes to the operands read as
  # races (they did for the larger products of test_gemm).
  (cd build-tsan && export OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" &&
     timed "tsan: test" "${norandom[@]}" ctest --output-on-failure --parallel "$jobs" --output-junit junit.xml "$@")
}

address() {
  timed "asan: install" scripts/install_deps.sh clang libclang-rt-14-dev python3-torch
  echo "== sanitize: address,undefined with Clang (build-asan)"
  # Without the libtorch layer: Debian's libtorch 1.13 headers do not compile
  # with Clang 14 in C++20 (ATen's List instantiates std::vector<IValue> while
  # IValue is incomplete); the layer's own logic is the exchange and the
  # stages, which run here through the other layers' tests.
  timed "asan: build" env CXX=clang++ scripts/build.sh build-asan -DSYNCBN_SANITIZE=address,undefined -DSYNCBN_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSYNCBN_WERROR=ON -DSYNCBN_TORCH=OFF -DSYNCBN_BUILD_BENCH=OFF
  (cd build-asan && export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
     UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" &&
     timed "asan: test" "${norandom[@]}" ctest --output-on-failure --parallel "$jobs" --output-junit junit.xml "$@")
}

case $which in
  thread) thread "$@" ;;
  address) address "$@" ;;
  all) thread "$@"; address "$@" ;;
esac
