#!/usr/bin/env bash
# Configures (once) and builds syncbn incrementally.
#   scripts/build.sh [BUILD_DIR] [--target NAME]... [extra CMake -D options...]
# BUILD_DIR defaults to build/; --target builds only that target (and what it
# needs); SYNCBN_WERROR=ON in the environment treats warnings as errors.
# Re-running only rebuilds what changed. syncbn's configure messages
# (CUDA, NCCL, the CPU levels built) are printed; the rest only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
if [[ $# -gt 0 && $1 != -* ]]; then
  build_dir=$1
  shift
fi
targets=()
options=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == --target ]]; then
    [[ $# -ge 2 ]] || { echo "build.sh: --target needs a name" >&2; exit 2; }
    targets+=(--target "$2")
    shift 2
  else
    options+=("$1")
    shift
  fi
done
# SYNCBN_WERROR=ON in the environment (.ci/run sets it) makes warnings errors.
if [[ -n ${SYNCBN_WERROR:-} ]]; then
  options=(-DSYNCBN_WERROR="$SYNCBN_WERROR" "${options[@]}")
fi
generator=()
if [ ! -f "$build_dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
if ! log=$(cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" \
             "${options[@]}" 2>&1); then
  echo "$log" >&2
  exit 1
fi
grep '^-- syncbn' <<<"$log" || true
cmake --build "$build_dir" --parallel "$(nproc 2>/dev/null || echo 2)" "${targets[@]}"
