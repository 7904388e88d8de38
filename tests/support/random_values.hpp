#pragma once
// Random test values on the host, and tensors of them on the device under
// test, for the tests that compare a kernel with a host specification.

#include <cstdint>
#include <random>
#include <vector>

#include "support/device_under_test.hpp"
#include "syncbn/core/tensor.hpp"

namespace syncbn::testing {

/// `count` standard normal values; rounded to float when `float_exact` (so
/// that a float32 tensor of them holds exactly the values the spec reads).
inline std::vector<double> normal_values(std::int64_t count, std::mt19937_64& rng, bool float_exact = false) {
  std::normal_distribution<double> d;
  std::vector<double> v(static_cast<std::size_t>(count));
  for (double& e : v) e = float_exact ? static_cast<float>(d(rng)) : d(rng);
  return v;
}

/// The values as a tensor of `dtype` on the device under test.
inline Tensor device_tensor(const std::vector<double>& v, const Shape& shape, DType dtype) {
  return Tensor::from_vector(v, shape, test_device()).to(dtype);
}

}  // namespace syncbn::testing
