#pragma once
// What the CPU and its operating system can run, read with CPUID and XGETBV
// (compiled for the baseline: it runs before any level is chosen).

namespace syncbn::cpu::detail {

/// x86-64-v3: AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, with the OS
/// saving the AVX state. False on other architectures.
bool has_x86_64_v3() noexcept;

/// x86-64-v4: v3 plus AVX512F, AVX512BW, AVX512CD, AVX512DQ, AVX512VL, with
/// the OS saving the opmask and ZMM state. False on other architectures.
bool has_x86_64_v4() noexcept;

}  // namespace syncbn::cpu::detail
