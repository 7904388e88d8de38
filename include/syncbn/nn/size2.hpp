#pragma once
// Size2: a {height, width} pair that a single number also gives (PyTorch's
// `kernel_size=3` or `kernel_size=(3, 5)`).

#include <array>
#include <cstdint>
#include <string>

namespace syncbn::nn {

struct Size2 {
  std::int64_t h = 0, w = 0;
  constexpr Size2(std::int64_t both) : h(both), w(both) {}  // NOLINT(google-explicit-constructor): as PyTorch's int
  constexpr Size2(std::int64_t height, std::int64_t width) : h(height), w(width) {}
  constexpr std::array<std::int64_t, 2> array() const { return {h, w}; }
  /// "3" when both are equal, else "(3, 5)".
  std::string str() const {
    if (h == w) return std::to_string(h);
    // Appended piece by piece: GCC 12 warns (-Wrestrict, falsely) on "(" + std::string.
    std::string out = "(";
    out += std::to_string(h);
    out += ", ";
    out += std::to_string(w);
    out += ")";
    return out;
  }
  friend constexpr bool operator==(const Size2&, const Size2&) = default;
};

}  // namespace syncbn::nn
