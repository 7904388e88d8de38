#!/usr/bin/env bash
# Installs what is missing, builds (build/, the plain build: GCC or the
# system's compiler, CUDA where nvcc is found) and runs the whole test suite
# through CTest: every test case at the CPU level the library picks, the
# [levels] cases at every other level this build has and on an emulated CPU
# without AVX (qemu-user), the training runs and stress cases, the MPI jobs,
# the examples, the layering probes and the consumer builds. CUDA tests
# report "skipped" on machines without a GPU. docs/testing.md says what each
# configuration proves; .ci/run adds the sanitizer builds (scripts/sanitize.sh).
#   scripts/test.sh [--quick] [extra ctest arguments...]
# --quick: a representative subset for the edit-build-test loop (under three
# minutes after a build on 2 cores): every area at the dispatched level,
# without the long runs, the other levels, the emulated CPU, the consumer
# builds and the CUDA cases.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/timing.sh
filter=()
if [[ ${1:-} == --quick ]]; then
  filter=(-LE '^(long|levels|portable|consumer|cuda)$')
  shift
fi
# python3-torch runs the PyTorch interop tests (they skip without it);
# qemu-user the "portable" tests: the kernels on an emulated CPU without AVX.
extra=(python3-torch)
[[ $(uname -m) == x86_64 ]] && extra+=(qemu-user)
timed "plain: install" scripts/install_deps.sh "${extra[@]}"
timed "plain: build" scripts/build.sh build
cd build
timed "plain: test" ctest --output-on-failure --parallel "$(nproc 2>/dev/null || echo 2)" --output-junit junit.xml \
  "${filter[@]}" "$@"
