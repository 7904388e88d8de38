// Conversions between float32/float64 and the 16-bit storage types: round to
// nearest even, subnormals, overflow, NaN. Device-generic: the CUDA
// conversions must give the same bits as the CPU ones.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "support/device_under_test.hpp"
#include "syncbn/core/tensor.hpp"

using syncbn::DType;
using syncbn::Shape;
using syncbn::Tensor;
using syncbn::testing::test_device;

namespace {

// Converts values to `dtype` on the device under test and back to float32.
std::vector<float> round_trip(const std::vector<float>& values, DType dtype) {
  const Tensor t = Tensor::from_vector(values, Shape{static_cast<std::int64_t>(values.size())}, test_device());
  return t.to(dtype).to(DType::Float32).to_vector<float>();
}

}  // namespace

TEST_CASE("float32 to float16 rounds to nearest even with subnormals and overflow", "[tensor]") {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> in{1.0f,
                              0.1f,
                              -2.5f,
                              65504.0f,
                              65519.0f,
                              65520.0f,
                              1e-8f,
                              std::ldexp(1.0f, -24),
                              3e-8f,
                              1.0f + std::ldexp(1.0f, -11),
                              1.0f + 3 * std::ldexp(1.0f, -11),
                              std::ldexp(1.0f, -14),
                              -inf};
  const std::vector<float> want{1.0f,
                                0.0999755859375f,
                                -2.5f,
                                65504.0f,
                                65504.0f,
                                inf,
                                0.0f,
                                std::ldexp(1.0f, -24),
                                std::ldexp(1.0f, -24),
                                1.0f,
                                1.0f + std::ldexp(1.0f, -9),
                                std::ldexp(1.0f, -14),
                                -inf};
  const auto got = round_trip(in, DType::Float16);
  for (std::size_t i = 0; i < in.size(); ++i) {
    INFO("input " << in[i]);
    CHECK(got[i] == want[i]);
  }
  CHECK(std::isnan(round_trip({std::nanf("")}, DType::Float16)[0]));
}

TEST_CASE("float32 to bfloat16 rounds to nearest even and keeps NaN and infinity", "[tensor]") {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> in{0.1f, 1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), -3.0f, inf};
  const std::vector<float> want{0.10009765625f, 1.0f, 1.0f + std::ldexp(1.0f, -6), -3.0f, inf};
  const auto got = round_trip(in, DType::BFloat16);
  for (std::size_t i = 0; i < in.size(); ++i) {
    INFO("input " << in[i]);
    CHECK(got[i] == want[i]);
  }
  CHECK(std::isnan(round_trip({std::nanf("")}, DType::BFloat16)[0]));
}

TEST_CASE("float64 and int64 conversions round once and truncate toward zero", "[tensor]") {
  const Tensor d = Tensor::from_vector(std::vector<double>{0.1, -1.75, 3.0, 1e10}, Shape{4}, test_device());
  const auto f = d.to(DType::Float32).to_vector<float>();
  CHECK(f == std::vector<float>{0.1f, -1.75f, 3.0f, 1e10f});
  const auto i = d.to(DType::Int64).to_vector<std::int64_t>();
  CHECK(i == std::vector<std::int64_t>{0, -1, 3, 10000000000LL});
  const auto back = Tensor::from_vector(std::vector<std::int64_t>{-7, 1LL << 50}, Shape{2}, test_device())
                        .to(DType::Float64)
                        .to_vector<double>();
  CHECK(back == std::vector<double>{-7.0, std::ldexp(1.0, 50)});
}
