#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite through CTest:
# every test area at every CPU level this build has (SYNCBN_CPU_CAPABILITY),
# the layering probes, the consumer builds and, on x86-64, the suite once more
# on an emulated CPU without AVX (qemu-user). CUDA tests report "skipped" on
# machines without a GPU.
#   scripts/test.sh [extra ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
# python3-torch runs the PyTorch interop tests (they skip without it);
# qemu-user the "portable" tests: the suite on an emulated CPU without AVX.
extra=(python3-torch)
[[ $(uname -m) == x86_64 ]] && extra+=(qemu-user)
scripts/install_deps.sh "${extra[@]}"
scripts/build.sh build
cd build
ctest --output-on-failure --parallel "$(nproc 2>/dev/null || echo 2)" "$@"
