#pragma once
// Counter-based random numbers: element i of a seeded stream depends on
// (seed, i) only, so any device, dtype or chunking sees the same values.

#include <cstdint>

namespace syncbn::core::detail {

/// Fills out[0..n) with uniform samples in [low, high).
void fill_uniform(double* out, std::int64_t n, std::uint64_t seed, double low, double high);

/// Fills out[0..n) with normal samples (Box-Muller over pairs of uniforms).
void fill_normal(double* out, std::int64_t n, std::uint64_t seed, double mean, double stddev);

}  // namespace syncbn::core::detail
