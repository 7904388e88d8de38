#pragma once
// Fixed, printed seeds for the tests: every random input is reproducible from
// the seed that Catch2 prints when a check fails.

#include <cstdint>
#include <random>

namespace syncbn::testing {

/// The seed of the test suite's random inputs; CAPTURE it in each test.
inline constexpr std::uint64_t kSeed = 20261122;

/// A generator seeded from kSeed mixed with the given stream values, so that
/// independent threads can derive the same numbers (e.g. per round and replica).
inline std::mt19937_64 make_rng(std::uint64_t a = 0, std::uint64_t b = 0, std::uint64_t c = 0) {
  std::seed_seq seq{kSeed, a, b, c};
  return std::mt19937_64(seq);
}

}  // namespace syncbn::testing
