// Linear against a float64 reference, its initialisation and its errors.

#include <catch2/catch.hpp>

#include <cmath>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/linear.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::tolerance_for;

TEST_CASE("Linear forward and backward match a float64 reference", "[nn]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const std::int64_t n = GENERATE(0, 1, 5, 37);
  const bool bias = GENERATE(true, false);
  CAPTURE(dtype, n, bias, syncbn::testing::kSeed);
  const std::int64_t in = 19, out = 23;
  nn::Linear layer(in, out, nn::LinearOptions{bias, syncbn::testing::kSeed, dtype, test_device()});
  const Tensor x = Tensor::randn(Shape{n, in}, syncbn::testing::kSeed + 1, dtype, test_device());
  const Tensor dy = Tensor::randn(Shape{n, out}, syncbn::testing::kSeed + 2, dtype, test_device());
  const auto xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
  const auto wv = layer.weight().value.to_vector<double>();
  const auto bv = bias ? layer.bias().value.to_vector<double>() : std::vector<double>{};

  const auto tol = dtype == DType::Float64 ? tolerance_for(dtype) : syncbn::testing::Tolerance{1e-5, 1e-5};
  check_close(layer.forward(x), testing::ref::linear(xv, wv, bv, n, in, out), tol, "y");
  const Tensor dx = layer.backward(dy);
  // dx = dy * W; dW = dy^T x; db = sum_rows(dy).
  std::vector<double> dxr(static_cast<std::size_t>(n * in), 0.0), dwr(wv.size(), 0.0), dbr(static_cast<std::size_t>(out), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t o = 0; o < out; ++o) {
      const double g = dyv[static_cast<std::size_t>(i * out + o)];
      dbr[static_cast<std::size_t>(o)] += g;
      for (std::int64_t k = 0; k < in; ++k) {
        dxr[static_cast<std::size_t>(i * in + k)] += g * wv[static_cast<std::size_t>(o * in + k)];
        dwr[static_cast<std::size_t>(o * in + k)] += g * xv[static_cast<std::size_t>(i * in + k)];
      }
    }
  check_close(dx, dxr, tol, "dx");
  check_close(layer.weight().grad, dwr, tol, "dW");
  if (bias) check_close(layer.bias().grad, dbr, tol, "db");
  // Gradients accumulate over backward calls.
  layer.forward(x);
  layer.backward(dy);
  for (auto& v : dwr) v *= 2;
  check_close(layer.weight().grad, dwr, tol, "dW after two backward passes");
}

TEST_CASE("Linear initialises uniformly in +-1/sqrt(in_features) from its seed", "[nn]") {
  nn::Linear a(64, 32, nn::LinearOptions{true, 5, DType::Float32, test_device()});
  nn::Linear b(64, 32, nn::LinearOptions{true, 5, DType::Float32, test_device()});
  nn::Linear c(64, 32, nn::LinearOptions{true, 6, DType::Float32, test_device()});
  const auto wa = a.weight().value.to_vector<double>();
  CHECK(wa == b.weight().value.to_vector<double>());
  CHECK(wa != c.weight().value.to_vector<double>());
  CHECK(wa != a.bias().value.to_vector<double>());
  double lo = 1, hi = -1;
  for (double w : wa) {
    lo = std::min(lo, w);
    hi = std::max(hi, w);
  }
  CHECK(lo >= -0.125);
  CHECK(hi < 0.125);
  CHECK(lo < -0.1);  // the whole range is used
  CHECK(hi > 0.1);
}

TEST_CASE("Linear rejects inputs of the wrong rank, width, dtype or device", "[nn]") {
  nn::Linear layer(4, 3, nn::LinearOptions{true, 0, DType::Float32, test_device()});
  const std::string name = "Linear(in_features=4, out_features=3, bias=true)";
  CHECK_THROWS_MATCHES(layer.forward(Tensor::zeros(Shape{2, 5}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs(name + ": input has 5 features, expected 4"));
  CHECK_THROWS_MATCHES(layer.forward(Tensor::zeros(Shape{2, 2, 4}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs(name + ": expected 2-D input (N, 4), got 3-D input of shape (2, 2, 4)"));
  CHECK_THROWS_MATCHES(layer.forward(Tensor::zeros(Shape{2, 4}, DType::Float64, test_device())), InvalidArgument,
                       MessageIs(name + ": input has dtype float64, expected float32"));
  const Device other = syncbn::testing::test_on_cuda() ? Device::cpu(0) : Device::cpu(1);
  CHECK_THROWS_MATCHES(layer.forward(Tensor::zeros(Shape{2, 4}, DType::Float32, other)), InvalidArgument,
                       MessageIs(name + ": input is on " + other.str() + ", expected " + test_device().str() +
                                 " (the device of its parameters)"));
  CHECK_THROWS_MATCHES(layer.backward(Tensor::zeros(Shape{2, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs(name + ": backward called without a forward, expected forward first"));
  layer.forward(Tensor::zeros(Shape{2, 4}, DType::Float32, test_device()));
  CHECK_THROWS_MATCHES(layer.backward(Tensor::zeros(Shape{3, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs(name + ": grad_output has shape (3, 3), expected (2, 3) (the shape of the output)"));
  CHECK_THROWS_AS(nn::Linear(0, 3), InvalidArgument);
  CHECK_THROWS_AS(nn::Linear(2, 3, nn::LinearOptions{true, 0, DType::Int64}), InvalidArgument);
}

TEST_CASE("bias() of a Linear without one says what it expects", "[nn]") {
  nn::Linear layer(3, 2, nn::LinearOptions{.bias = false, .device = test_device()});
  CHECK_THROWS_MATCHES(layer.bias(), InvalidArgument,
                       MessageIs("Linear(in_features=3, out_features=2, bias=false): bias(): the layer has no bias, "
                                 "expected a layer made with bias = true"));
}
