// CPU levels: feature detection against the compiler's own, and the choice
// of the active level (Note [CPU dispatch] in src/core/cpu/isa.hpp).

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "syncbn/core/cpu.hpp"

using syncbn::cpu::Capability;

TEST_CASE("The CPU feature check agrees with the compiler's", "[core]") {
#if defined(__x86_64__)
  __builtin_cpu_init();
  // Every CPU with AVX2, FMA, BMI1 and BMI2 has the rest of x86-64-v3.
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
                  __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  CAPTURE(v3, v4);
  CHECK(syncbn::cpu::cpu_supports(Capability::AVX2) == v3);
  CHECK(syncbn::cpu::cpu_supports(Capability::AVX512) == v4);
#else
  CHECK_FALSE(syncbn::cpu::cpu_supports(Capability::AVX2));
  CHECK_FALSE(syncbn::cpu::cpu_supports(Capability::AVX512));
#endif
  CHECK(syncbn::cpu::cpu_supports(Capability::Baseline));
}

TEST_CASE("Every build has the baseline level, or only the native one", "[core]") {
  const auto levels = syncbn::cpu::compiled_capabilities();
  REQUIRE_FALSE(levels.empty());
  if (levels.front() == Capability::Native) {
    CHECK(levels.size() == 1);
  } else {
    CHECK(levels.front() == Capability::Baseline);
    CHECK(std::is_sorted(levels.begin(), levels.end()));
  }
}

TEST_CASE("The kernels use the forced level, or else the highest compiled level the CPU supports", "[core][levels]") {
  const char* forced = std::getenv("SYNCBN_CPU_CAPABILITY");
  const Capability active = syncbn::cpu::active_capability();
  CAPTURE(syncbn::cpu::capability_name(active));
  if (forced != nullptr && *forced != '\0') {
    CHECK(syncbn::cpu::capability_name(active) == std::string(forced));
  } else {
    Capability best = Capability::Baseline;
    for (Capability level : syncbn::cpu::compiled_capabilities())
      if (syncbn::cpu::cpu_supports(level)) best = level;
    CHECK(active == best);
  }
}

TEST_CASE("Levels have the names SYNCBN_CPU_CAPABILITY takes", "[core]") {
  CHECK(syncbn::cpu::capability_name(Capability::Baseline) == "baseline");
  CHECK(syncbn::cpu::capability_name(Capability::AVX2) == "avx2");
  CHECK(syncbn::cpu::capability_name(Capability::AVX512) == "avx512");
  CHECK(syncbn::cpu::capability_name(Capability::Native) == "native");
}
