#!/usr/bin/env bash
# Fails when a syncbn library holds an AVX instruction (a VEX- or
# EVEX-encoded one, or a ymm, zmm or mask register) outside the objects of
# the higher CPU levels (syncbn_cpu_<level>.o, Note [CPU dispatch]): all other
# code must run on any x86-64 CPU. Reads the disassembly, so every path
# counts, including those no test takes.
#   baseline_code.sh <objdump> <library.a>...
set -euo pipefail
objdump=$1
shift
status=0
for archive in "$@"; do
  "$objdump" -d --no-show-raw-insn "$archive" | awk -v archive="$archive" '
    / file format / { member = $1; sub(/:$/, "", member) }
    /:\tv[a-z]|%[yz]mm[0-9]|%k[0-7]/ {
      if (member ~ /^syncbn_cpu_(avx2|avx512)\.o$/) { level++; next }
      if (found[member]++ < 3) printf "%s(%s): %s\n", archive, member, $0
      bad++
    }
    END {
      if (bad) { printf "%s: %d AVX instructions outside the CPU level kernels\n", archive, bad; exit 1 }
      if (level) printf "%s: baseline code only (its %d AVX instructions are all in the level kernels)\n", archive, level
      else printf "%s: baseline code only\n", archive
    }' || status=1
done
exit "$status"
