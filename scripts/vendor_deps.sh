#!/usr/bin/env bash
# Copies Debian's Catch2 (v2 headers and CMake package) into .deps/ (ignored
# by git), for machines that have a compiler, CMake and CUDA but no Debian
# packages, such as a lent GPU machine: scripts/gpu_check.sh finds it there.
#   scripts/vendor_deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
rm -rf .deps
mkdir -p .deps/include .deps/lib/cmake
cp -r /usr/include/catch2 .deps/include/
cp -r /usr/lib/cmake/Catch2 .deps/lib/cmake/
cp /usr/lib/libCatch2WithMain.a .deps/lib/  # the package's targets name it
echo "vendor_deps: Catch2 copied into .deps/ ($(du -sh .deps | cut -f1))"
