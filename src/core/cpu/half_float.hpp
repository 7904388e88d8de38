#pragma once
// IEEE binary16 and bfloat16 conversions on the host (round to nearest even),
// so that the CPU backend can store the reduced-precision types and serve as
// the reference for the CUDA mixed-precision paths.

#include <cstdint>
#include <cstring>

namespace syncbn::cpu {
// Internal linkage: CPU kernels compiled once per level include this header
// too, and must not share (weak) copies of these functions with other levels.
namespace {

inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// float -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t float_to_bfloat16(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffU) > 0x7f800000U) return static_cast<std::uint16_t>((u >> 16) | 0x0040U);
  const std::uint32_t rounding = 0x7fffU + ((u >> 16) & 1U);
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

inline float bfloat16_to_float(std::uint16_t h) noexcept { return bits_float(static_cast<std::uint32_t>(h) << 16); }

/// float -> IEEE half bits, round to nearest even, with subnormals, overflow
/// to infinity and NaN preserved.
inline std::uint16_t float_to_half(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000U;
  const std::uint32_t abs = u & 0x7fffffffU;
  if (abs > 0x7f800000U) return static_cast<std::uint16_t>(sign | 0x7e00U);  // NaN
  if (abs >= 0x477ff000U) return static_cast<std::uint16_t>(sign | 0x7c00U);  // rounds to >= 65520: inf
  if (abs < 0x38800000U) {
    // Subnormal half (or zero): value = mantissa * 2^-24.
    if (abs < 0x33000000U) return static_cast<std::uint16_t>(sign);  // < 2^-25 rounds to zero
    const std::uint32_t exp = abs >> 23;
    const std::uint32_t mant = (abs & 0x7fffffU) | 0x800000U;
    const std::uint32_t shift = 126U - exp;  // 14 + (113 - exp)
    const std::uint32_t half_mant = mant >> shift;
    const std::uint32_t rest = mant & ((1U << shift) - 1U);
    const std::uint32_t halfway = 1U << (shift - 1U);
    std::uint32_t r = half_mant;
    if (rest > halfway || (rest == halfway && (half_mant & 1U))) ++r;
    return static_cast<std::uint16_t>(sign | r);
  }
  // Normal: rebias the exponent (127 -> 15) and round the mantissa to 10 bits.
  std::uint32_t v = abs - 0x38000000U;
  const std::uint32_t rounding = 0xfffU + ((v >> 13) & 1U);
  v += rounding;
  return static_cast<std::uint16_t>(sign | (v >> 13));
}

inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = (static_cast<std::uint32_t>(h) & 0x8000U) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fU;
  const std::uint32_t mant = h & 0x3ffU;
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal: mant * 2^-24.
    const float value = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -value : value;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000U | (mant << 13));
  return bits_float(sign | ((exp + 112U) << 23) | (mant << 13));
}

}  // namespace
}  // namespace syncbn::cpu
