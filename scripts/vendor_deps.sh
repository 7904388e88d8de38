#!/usr/bin/env bash
# Copies what the build needs from Debian into .deps/ (ignored by git), for
# machines that have a compiler, CMake and CUDA but no Debian packages, such
# as a lent GPU machine (scripts/gpu_check.sh finds it there): Catch2 (v2
# headers and CMake package), nlohmann-json (headers and CMake package) and
# zlib (headers and the static library). A BLAS is not copied: without one
# the CPU convolutions there throw Unsupported and their tests skip.
#   scripts/vendor_deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
rm -rf .deps
mkdir -p .deps/include .deps/lib/cmake
cp -r /usr/include/catch2 .deps/include/
cp -r /usr/lib/cmake/Catch2 .deps/lib/cmake/
cp /usr/lib/libCatch2WithMain.a .deps/lib/  # the package's targets name it
cp -r /usr/include/nlohmann .deps/include/
mkdir -p .deps/share/cmake
cp -r /usr/share/cmake/nlohmann_json .deps/share/cmake/
cp /usr/include/zlib.h /usr/include/zconf.h .deps/include/
cp "/usr/lib/$(gcc -print-multiarch)/libz.a" .deps/lib/
echo "vendor_deps: Catch2, nlohmann-json and zlib copied into .deps/ ($(du -sh .deps | cut -f1))"
