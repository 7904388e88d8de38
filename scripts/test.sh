#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite through CTest.
# CUDA tests report "skipped" on machines without a GPU.
#   scripts/test.sh [extra ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh build
cd build
ctest --output-on-failure --parallel "$(nproc 2>/dev/null || echo 2)" "$@"
