// Configure-time probe: which CPU levels this (build) machine can run, with
// the library's own detection. Prints "baseline", "avx2", "avx512".

#include <cstdio>

#include "cpu/cpu_features.cpp"  // the library's detection, compiled into the probe

int main() {
  std::printf("baseline");
  if (syncbn::cpu::detail::has_x86_64_v3()) std::printf(";avx2");
  if (syncbn::cpu::detail::has_x86_64_v4()) std::printf(";avx512");
  std::printf("\n");
  return 0;
}
