// Counter-based uniform and normal samples (splitmix64 as the mixer).

#include "random.hpp"

#include <cmath>
#include <numbers>

#include "syncbn/core/splitmix64.hpp"

namespace syncbn::core::detail {
namespace {

// Uniform in [0, 1) with 53 random bits, for element `counter` of stream `key`.
double uniform01(std::uint64_t key, std::uint64_t counter) {
  return static_cast<double>(splitmix64(key ^ (counter * 0xD1B54A32D192ED03ULL)) >> 11) * 0x1.0p-53;
}

}  // namespace

void fill_uniform(double* out, std::int64_t n, std::uint64_t seed, double low, double high) {
  const std::uint64_t key = splitmix64(seed);
  for (std::int64_t i = 0; i < n; ++i) out[i] = low + (high - low) * uniform01(key, static_cast<std::uint64_t>(i));
}

void fill_normal(double* out, std::int64_t n, std::uint64_t seed, double mean, double stddev) {
  const std::uint64_t key = splitmix64(seed ^ 0x6E6F726D616CULL);  // a stream apart from fill_uniform's
  for (std::int64_t pair = 0; 2 * pair < n; ++pair) {
    const auto c = static_cast<std::uint64_t>(2 * pair);
    const double u1 = 1.0 - uniform01(key, c);  // (0, 1]: log is finite
    const double u2 = uniform01(key, c + 1);
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    out[2 * pair] = mean + stddev * r * std::cos(angle);
    if (2 * pair + 1 < n) out[2 * pair + 1] = mean + stddev * r * std::sin(angle);
  }
}

}  // namespace syncbn::core::detail
