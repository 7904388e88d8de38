#!/usr/bin/env bash
# Checks that each layer declares exactly the layers it includes (Note
# [Layers] in docs/design.md): for every src/<layer>/CMakeLists.txt, the
# DEPENDS list of its syncbn_add_layer call must equal the set of other
# layers whose public headers its sources and public headers include. A
# header belongs to the layer whose HEADERS list names it or its folder
# (syncbn/error.hpp belongs to sync). Prints every difference and exits 1
# when there is one.
#   scripts/check_layer_dependencies.sh [source dir]
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"

# The syncbn_add_layer call of a layer's CMakeLists.txt, on one line.
layer_call() { sed -n '/syncbn_add_layer(/,/)/p' "src/$1/CMakeLists.txt" | tr '\n' ' '; }
# The words after KEYWORD in the call, up to the next keyword or ')'.
call_list() {
  sed -E "s/.*[( ]$2 +([^)]*).*/\1/; t; s/.*//" <<<"$1" |
    sed -E 's/ (HEADERS|SOURCES|DEPENDS) .*//' | tr ' ' '\n' | grep -v '^$' || true
}

layers=()
declare -A owner=()  # header or header folder -> layer
for file in src/*/CMakeLists.txt; do
  call=$(layer_call "$(basename "$(dirname "$file")")")
  [ -n "$call" ] || continue
  layer=$(sed -E 's/.*syncbn_add_layer\( *([a-z_]+).*/\1/' <<<"$call")
  layers+=("$layer")
  for header in $(call_list "$call" HEADERS); do owner[$header]=$layer; done
done
[ ${#layers[@]} -gt 0 ] || { echo "check_layer_dependencies: no syncbn_add_layer call under $root/src" >&2; exit 2; }

# The layer owning an included path (syncbn/nn/module.hpp -> nn), by its
# longest listed prefix; empty for headers of no layer (the umbrella).
owner_of() {
  local path=$1
  while [ -n "$path" ]; do
    if [ -n "${owner[$path]+x}" ]; then echo "${owner[$path]}"; return; fi
    [ "$path" = "${path%/*}" ] && return
    path=${path%/*}
  done
}

status=0
for layer in "${layers[@]}"; do
  declared=$(call_list "$(layer_call "$layer")" DEPENDS | sort -u)
  folders=("src/$layer")
  [ -d "include/syncbn/$layer" ] && folders+=("include/syncbn/$layer")
  included=$(grep -rhoE '^[[:space:]]*#[[:space:]]*include[[:space:]]+"syncbn/[^"]+"' "${folders[@]}" |
    sed -E 's/.*"(syncbn\/[^"]+)".*/\1/' | sort -u |
    while read -r header; do owner_of "$header"; done | grep -vx "$layer" | sort -u || true)
  missing=$(comm -13 <(echo "$declared") <(echo "$included") | grep -v '^$' || true)
  unused=$(comm -23 <(echo "$declared") <(echo "$included") | grep -v '^$' || true)
  if [ -n "$missing" ]; then
    echo "$layer: includes headers of $(echo $missing) but does not declare it in DEPENDS (src/$layer/CMakeLists.txt)"
    status=1
  fi
  if [ -n "$unused" ]; then
    echo "$layer: declares DEPENDS $(echo $unused) but includes none of its headers (src/$layer/CMakeLists.txt)"
    status=1
  fi
done
# Within core, the folders include downwards only (Note [Layers] in
# docs/design.md): backend/ (the kernel tables) below cpu/ and cuda/ (the
# backends, which do not see each other), below the tensor API at core's
# top, whose kernel_registry.cpp picks a backend.
core_below() {  # the private folders a core folder may include
  case $1 in
    backend) echo "backend" ;;
    cpu) echo "cpu backend" ;;
    cuda) echo "cuda backend" ;;
    *) echo "cpu cuda backend" ;;
  esac
}
if [ -d src/core ]; then
  while IFS= read -r file; do
    rel=${file#src/core/}
    folder=$([[ $rel == */* ]] && echo "${rel%%/*}" || echo top)
    allowed=" $(core_below "$folder") "
    while IFS= read -r included; do
      target=${included%%/*}
      [[ $included == */* ]] || target=top
      # A header without a folder is a top-level one, except a backend's own
      # headers, which its files name with their folder.
      if [[ $allowed != *" $target "* && $target != "$folder" ]]; then
        echo "core: $file includes \"$included\", expected only public headers and ${allowed# } of core's private folders (backend < cpu, cuda < the tensor API)"
        status=1
      fi
    done < <(grep -hoE '^[[:space:]]*#[[:space:]]*include[[:space:]]+"[^"]+"' "$file" | sed -E 's/.*"([^"]+)".*/\1/' |
             grep -v '^syncbn/' || true)
  done < <(find src/core -name '*.cpp' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' | sort)
fi

[ $status -eq 0 ] && echo "every layer declares exactly the layers it includes: ${layers[*]}; core's folders include downwards"
exit $status
