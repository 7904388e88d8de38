#!/usr/bin/env bash
# scripts/check_layer_dependencies.sh passes on the tree as it is, and fails,
# naming the layer or file, on copies of it with a dependency left out of a
# DEPENDS list, with one declared but never included, and with a core folder
# that includes a folder above it.
#   declared_dependencies.sh <source dir>
set -euo pipefail
source_dir=$1
check="$source_dir/scripts/check_layer_dependencies.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; cat "$work/out" 2>/dev/null; exit 1; }

bash "$check" "$source_dir" >"$work/out" 2>&1 || fail "the tree as it is"
cat "$work/out"

copy() {  # a copy of what the check reads: the layers' sources and headers
  rm -rf "$work/tree"
  mkdir -p "$work/tree"
  cp -r "$source_dir/src" "$source_dir/include" "$work/tree/"
}

copy
sed -i -E 's/^( *DEPENDS .*)\bsync /\1/' "$work/tree/src/nn/CMakeLists.txt"
! bash "$check" "$work/tree" >"$work/out" 2>&1 || fail "nn without sync in DEPENDS passed"
grep -q "^nn: includes headers of sync but does not declare it" "$work/out" || fail "no message naming nn"

copy
sed -i -E 's/^( *DEPENDS .*)\)$/\1 data)/' "$work/tree/src/optim/CMakeLists.txt"
! bash "$check" "$work/tree" >"$work/out" 2>&1 || fail "optim declaring data passed"
grep -q "^optim: declares DEPENDS data but includes none of its headers" "$work/out" || fail "no message naming optim"
copy
sed -i '0,/#include "syncbn\/core\/device.hpp"/s//#include "syncbn\/core\/device.hpp"\n#include "cpu\/kernel_set.hpp"/' \
  "$work/tree/src/core/backend/storage.hpp"
! bash "$check" "$work/tree" >"$work/out" 2>&1 || fail "backend/ including a cpu/ header passed"
grep -q '^core: src/core/backend/storage.hpp includes "cpu/kernel_set.hpp"' "$work/out" || fail "no message naming the file"
echo "a missing and an unused dependency, and a core folder including upwards, are all reported"
