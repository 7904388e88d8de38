// CPU feature detection with CPUID and XGETBV. Written out rather than with
// __builtin_cpu_supports so that GCC and Clang check exactly the same bits,
// including the operating system's XSAVE support for the wider registers.

#include "cpu/cpu_features.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace syncbn::cpu::detail {

#if defined(__x86_64__) || defined(__i386__)
namespace {

struct Registers {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

Registers cpuid(unsigned leaf, unsigned subleaf) {
  Registers r;
  if (!__get_cpuid_count(leaf, subleaf, &r.eax, &r.ebx, &r.ecx, &r.edx)) return Registers{};
  return r;
}

bool bit(unsigned value, int index) { return ((value >> index) & 1U) != 0; }

// The register state the operating system saves on a context switch (XCR0).
unsigned long long enabled_state() {
  if (!bit(cpuid(1, 0).ecx, 27)) return 0;  // no OSXSAVE: XGETBV is not available
  unsigned eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

}  // namespace

bool has_x86_64_v3() noexcept {
  const Registers leaf1 = cpuid(1, 0);
  const Registers leaf7 = cpuid(7, 0);
  const Registers ext1 = cpuid(0x80000001U, 0);
  const bool features = bit(leaf1.ecx, 12)     // FMA
                        && bit(leaf1.ecx, 22)  // MOVBE
                        && bit(leaf1.ecx, 28)  // AVX
                        && bit(leaf1.ecx, 29)  // F16C
                        && bit(leaf7.ebx, 3)   // BMI1
                        && bit(leaf7.ebx, 5)   // AVX2
                        && bit(leaf7.ebx, 8)   // BMI2
                        && bit(ext1.ecx, 5);   // LZCNT (ABM)
  constexpr unsigned long long kAvxState = 0x6;  // XMM and YMM
  return features && (enabled_state() & kAvxState) == kAvxState;
}

bool has_x86_64_v4() noexcept {
  if (!has_x86_64_v3()) return false;
  const Registers leaf7 = cpuid(7, 0);
  const bool features = bit(leaf7.ebx, 16)     // AVX512F
                        && bit(leaf7.ebx, 17)  // AVX512DQ
                        && bit(leaf7.ebx, 28)  // AVX512CD
                        && bit(leaf7.ebx, 30)  // AVX512BW
                        && bit(leaf7.ebx, 31); // AVX512VL
  constexpr unsigned long long kAvx512State = 0xe6;  // XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM
  return features && (enabled_state() & kAvx512State) == kAvx512State;
}

#else

bool has_x86_64_v3() noexcept { return false; }
bool has_x86_64_v4() noexcept { return false; }

#endif

}  // namespace syncbn::cpu::detail
