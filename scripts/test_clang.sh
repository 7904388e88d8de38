#!/usr/bin/env bash
# Builds syncbn with Clang (CPU only) into build-clang/ and runs its test
# suite: every CPU level again, compiled by another compiler (Clang's avx512
# code takes the plain -march=x86-64-v4, GCC 12's needs a workaround flag).
# The consumer builds are left to scripts/test.sh.
#   scripts/test_clang.sh [extra ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh clang python3-torch  # torch: the PyTorch interop tests
CXX=clang++ scripts/build.sh build-clang -DSYNCBN_CUDA=OFF -DSYNCBN_BUILD_BENCH=OFF
cd build-clang
ctest --output-on-failure --parallel "$(nproc 2>/dev/null || echo 2)" -LE consumer "$@"
