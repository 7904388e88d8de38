#!/usr/bin/env bash
# Configures (once) and builds syncbn incrementally.
#   scripts/build.sh [BUILD_DIR] [extra CMake -D options...]
# BUILD_DIR defaults to build/. Re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:-build}
shift || true
generator=()
if [ ! -f "$build_dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" "$@" >/dev/null
cmake --build "$build_dir" --parallel "$(nproc 2>/dev/null || echo 2)"
