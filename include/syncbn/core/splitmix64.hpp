#pragma once
// splitmix64's mixing function, the one hash behind syncbn's seeded streams:
// the tensors' counter-based samples (core) and the batch order and flips
// of an epoch (data). Shared so that both stay the same function.

#include <cstdint>

namespace syncbn::core {

/// Adds the golden-ratio increment to x and mixes it (Steele, Lea and
/// Flood's splitmix64): a bijection on 64-bit values whose outputs for
/// consecutive x are statistically independent.
constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

/// splitmix64's sequence step: the increment its state advances by.
inline constexpr std::uint64_t kSplitmixIncrement = 0x9E3779B97F4A7C15ULL;

}  // namespace syncbn::core
