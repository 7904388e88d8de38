#!/usr/bin/env bash
# Where a build tree's time went: per target, the compile and link time
# summed over its build steps (from Ninja's log; the steps of 2 cores
# overlap, so the sums exceed the wall time), and per test binary and CPU
# level, the number of CTest tests and their summed time (from the JUnit file
# that scripts/test.sh and scripts/sanitize.sh have CTest write).
#   scripts/ci_report.sh <build dir>...
set -euo pipefail
for dir in "$@"; do
  echo "== $dir"
  if [[ -f $dir/.ninja_log ]]; then
    # One line per step (a step with several outputs is listed once per output).
    awk 'NR > 1 && !seen[$1 " " $2 " " $5]++ {
           out = $4; target = ""
           if (match(out, /CMakeFiles\/[^\/]+\.dir\//)) target = substr(out, RSTART + 11, RLENGTH - 16)
           else {
             n = split(out, parts, "/"); base = parts[n]
             if (match(base, /^syncbn_test_[a-z]+_(tests|include)-/)) target = substr(base, 1, index(base, "_tests-") + index(base, "_include-") - 1)
             else if (base ~ /^lib.*\.a$/) target = substr(base, 4, length(base) - 5)
             else if (base ~ /^syncbn_cpu_.*\.o/) target = "syncbn_core (level objects)"
             else target = base
           }
           sum[target] += ($2 - $1) / 1000; total += ($2 - $1) / 1000
           if ($2 > wall) wall = $2
         }
         END {
           printf "build: %.0f s of steps, %.0f s wall\n", total, wall / 1000
           for (t in sum) if (sum[t] >= 1) printf "  %7.1f s  %s\n", sum[t], t | "sort -rn"
         }' "$dir/.ninja_log"
  fi
  if [[ -f $dir/junit.xml ]]; then
    # The test name's prefix names the binary and level (core, core@avx2, cuda, examples...).
    grep -o '<testcase name="[^"]*"[^>]*time="[0-9.e+-]*"' "$dir/junit.xml" |
      sed -E 's/<testcase name="([^:"]*):[^"]*".*time="([0-9.e+-]*)"/\1 \2/' |
      awk '{ sum[$1] += $2; n[$1]++; total += $2 }
           END {
             printf "test: %.0f s of tests\n", total
             for (k in sum) printf "  %7.1f s  %4d tests  %s\n", sum[k], n[k], k | "sort -rn"
           }'
  fi
done
