// MSELoss and CrossEntropyLoss against float64 references, and their errors.

#include <catch2/catch.hpp>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/loss.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::tolerance_for;

TEST_CASE("MSELoss is the mean squared error and its gradient", "[nn][levels]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(dtype, syncbn::testing::kSeed);
  const Tensor x = Tensor::randn(Shape{7, 3}, syncbn::testing::kSeed, dtype, test_device());
  const Tensor t = Tensor::randn(Shape{7, 3}, syncbn::testing::kSeed + 1, dtype, test_device());
  const auto xv = x.to_vector<double>(), tv = t.to_vector<double>();
  double want = 0;
  std::vector<double> grad(xv.size());
  for (std::size_t i = 0; i < xv.size(); ++i) {
    want += (xv[i] - tv[i]) * (xv[i] - tv[i]);
    grad[i] = 2 * (xv[i] - tv[i]) / 21.0 * 0.5;
  }
  nn::MSELoss loss;
  const Tensor value = loss.forward(x, t);
  CHECK(value.rank() == 0);
  check_close(value, {want / 21.0}, tolerance_for(dtype), "loss");
  check_close(loss.backward(0.5), grad, tolerance_for(dtype), "grad");
  CHECK_THROWS_MATCHES(loss.forward(x, Tensor::zeros(Shape{3, 7}, dtype, test_device())), InvalidArgument,
                       MessageIs("MSELoss: target has shape (3, 7), expected (7, 3) (the input's)"));
  CHECK_THROWS_MATCHES(nn::MSELoss().backward(), InvalidArgument,
                       MessageIs("MSELoss: backward called without a forward, expected forward first"));
}

TEST_CASE("CrossEntropyLoss is softmax + NLL averaged over the batch", "[nn][levels]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(dtype, syncbn::testing::kSeed);
  const std::int64_t n = 9, c = 4;
  const Tensor logits = Tensor::randn(Shape{n, c}, syncbn::testing::kSeed, dtype, test_device(), 0.0, 3.0);
  const std::vector<std::int64_t> labels{0, 3, 1, 2, 2, 0, 1, 3, 3};
  const Tensor targets = Tensor::from_vector(labels, Shape{n}, test_device());
  std::vector<double> grad;
  const double want = testing::ref::cross_entropy(logits.to_vector<double>(), labels, n, c, &grad);
  nn::CrossEntropyLoss loss;
  check_close(loss.forward(logits, targets), {want}, tolerance_for(dtype), "loss");
  check_close(loss.backward(), grad, tolerance_for(dtype), "grad");
}

TEST_CASE("CrossEntropyLoss rejects bad targets before computing anything", "[nn]") {
  nn::CrossEntropyLoss loss;
  const Tensor logits = Tensor::zeros(Shape{2, 3}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(loss.forward(logits, Tensor::from_vector(std::vector<std::int64_t>{0, 3}, Shape{2}, test_device())),
                       InvalidArgument, MessageIs("CrossEntropyLoss: target 1 is class 3, expected a class in [0, 3)"));
  CHECK_THROWS_MATCHES(loss.forward(logits, Tensor::zeros(Shape{2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("CrossEntropyLoss: targets have dtype float32, expected int64 class indices"));
  CHECK_THROWS_MATCHES(loss.forward(logits, Tensor::zeros(Shape{3}, DType::Int64, test_device())), InvalidArgument,
                       MessageIs("CrossEntropyLoss: targets have shape (3), expected (2)"));
  CHECK_THROWS_MATCHES(loss.forward(Tensor::zeros(Shape{6}, DType::Float32, test_device()),
                                    Tensor::zeros(Shape{6}, DType::Int64, test_device())),
                       InvalidArgument, MessageIs("CrossEntropyLoss: expected 2-D logits (N, C), got 1-D logits"));
  CHECK_THROWS_MATCHES(loss.backward(), InvalidArgument,
                       MessageIs("CrossEntropyLoss: backward called without a forward, expected forward first"));
}

TEST_CASE("MSELoss names itself in errors about its target's dtype and device", "[nn]") {
  nn::MSELoss loss;
  const Tensor x = Tensor::zeros(Shape{2, 3}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(loss.forward(x, Tensor::zeros(Shape{2, 3}, DType::Float64, test_device())), InvalidArgument,
                       MessageIs("MSELoss: target has dtype float64, expected float32 (the input's)"));
  CHECK_THROWS_MATCHES(loss.forward(Tensor::zeros(Shape{2, 3}, DType::Int64, test_device()),
                                    Tensor::zeros(Shape{2, 3}, DType::Int64, test_device())),
                       InvalidArgument, MessageIs("MSELoss: input has dtype int64, expected float32 or float64"));
}
