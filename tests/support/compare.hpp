#pragma once
// Element-wise comparison against a float64 reference with
// WithinRel || WithinAbs, reporting the first mismatching index.

#include <catch2/catch.hpp>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "syncbn/core/tensor.hpp"

namespace syncbn::testing {

/// Tolerances of a comparison.
struct Tolerance {
  double rel;
  double abs;
};

/// Suggested tolerances per dtype for results computed with float64
/// accumulation and rounded once (float32: 1e-5 relative-or-absolute).
inline Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::Float64: return {1e-12, 1e-12};
    case DType::Float16: return {2e-3, 2e-3};
    case DType::BFloat16: return {1.6e-2, 1.6e-2};
    default: return {1e-5, 1e-5};
  }
}

/// Checks got[i] against want[i] for every i; on a mismatch, one failed
/// check names the first mismatching index, the values and `what`.
template <class T>
void check_close(const std::vector<T>& got, const std::vector<double>& want, Tolerance tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    // Catch2 v2's `a || b` keeps references to its operands: hold them by name.
    const auto rel = Catch::Matchers::WithinRel(want[i], tol.rel);
    const auto abs = Catch::Matchers::WithinAbs(want[i], tol.abs);
    if (!(rel.match(g) || abs.match(g))) {
      INFO("first mismatch at index " << i << " of " << got.size() << ": got " << g << ", expected " << want[i]);
      CHECK_THAT(g, Catch::Matchers::WithinRel(want[i], tol.rel) || Catch::Matchers::WithinAbs(want[i], tol.abs));
      return;
    }
  }
}

/// check_close on a tensor's elements (copied to the host as double).
inline void check_close(const Tensor& got, const std::vector<double>& want, Tolerance tol, const std::string& what) {
  check_close(got.to_vector<double>(), want, tol, what);
}

/// Checks bit-identical equality of two vectors, naming the first difference.
template <class T>
void check_equal(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want[i])) {
      INFO("first difference at index " << i << ": got " << got[i] << ", expected " << want[i]);
      CHECK(got[i] == want[i]);
      return;
    }
  }
}

}  // namespace syncbn::testing
