// ReLU, Flatten, Identity and Sequential.

#include <catch2/catch.hpp>

#include <memory>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"

using namespace syncbn;
using syncbn::testing::check_equal;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

TEST_CASE("ReLU passes positive values and their gradients only", "[nn][levels]") {
  nn::ReLU relu;
  const Tensor x = Tensor::from_vector(std::vector<float>{-2, 0, 3, -0.5f, 7, 1e-8f}, Shape{2, 3}, test_device());
  check_equal(relu.forward(x).to_vector<float>(), std::vector<float>{0, 0, 3, 0, 7, 1e-8f}, "relu");
  const Tensor dy = Tensor::full(Shape{2, 3}, 2.0, DType::Float32, test_device());
  check_equal(relu.backward(dy).to_vector<float>(), std::vector<float>{0, 0, 2, 0, 2, 2}, "relu backward");
}

TEST_CASE("Flatten views (N, ...) as (N, features) and restores the shape in backward", "[nn]") {
  nn::Flatten flatten;
  const Tensor x = Tensor::randn(Shape{3, 2, 4, 5}, syncbn::testing::kSeed, DType::Float32, test_device());
  const Tensor y = flatten.forward(x);
  CHECK(y.shape() == Shape{3, 40});
  CHECK(y.shares_storage_with(x));
  CHECK(flatten.backward(y).shape() == x.shape());
  CHECK_THROWS_MATCHES(flatten.forward(Tensor::zeros(Shape{4}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("Flatten(): expected input of rank >= 2 (N, ...), got 1-D input"));
}

TEST_CASE("Identity returns its input and passes the gradient through", "[nn]") {
  nn::Identity identity;
  CHECK_THROWS_MATCHES(identity.backward(Tensor::zeros(Shape{2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("Identity(): backward called without a forward, expected forward first"));
  const Tensor x = Tensor::randn(Shape{2, 3, 4, 4}, syncbn::testing::kSeed, DType::Float32, test_device());
  const Tensor y = identity.forward(x);
  CHECK(y.shape() == x.shape());
  CHECK(y.shares_storage_with(x));
  const Tensor dy = Tensor::randn(Shape{2, 3, 4, 4}, syncbn::testing::kSeed + 1, DType::Float32, test_device());
  check_equal(identity.backward(dy).to_vector<float>(), dy.to_vector<float>(), "identity backward");
  CHECK_THROWS_MATCHES(identity.backward(Tensor::zeros(Shape{2, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("Identity(): grad_output has shape (2, 3), expected (2, 3, 4, 4) (the shape of the output)"));
  CHECK(identity.parameters().empty());
  CHECK(identity.named_buffers().empty());
}

TEST_CASE("Sequential composes forward in order and backward in reverse", "[nn]") {
  auto fc1 = std::make_shared<nn::Linear>(6, 5, nn::LinearOptions{true, 1, DType::Float64, test_device()});
  auto fc2 = std::make_shared<nn::Linear>(5, 2, nn::LinearOptions{true, 2, DType::Float64, test_device()});
  nn::Sequential seq({fc1, std::make_shared<nn::ReLU>(), fc2});
  CHECK(seq.size() == 3);
  const Tensor x = Tensor::randn(Shape{4, 6}, syncbn::testing::kSeed, DType::Float64, test_device());
  const Tensor dy = Tensor::randn(Shape{4, 2}, syncbn::testing::kSeed + 1, DType::Float64, test_device());
  const Tensor y = seq.forward(x);
  const Tensor dx = seq.backward(dy);

  // The same chain by hand on fresh copies of the layers.
  auto a = fc1->clone(), c = fc2->clone();
  nn::ReLU r;
  a->zero_grad();
  c->zero_grad();
  const Tensor y_manual = c->forward(r.forward(a->forward(x)));
  const Tensor dx_manual = a->backward(r.backward(c->backward(dy)));
  check_equal(y.to_vector<double>(), y_manual.to_vector<double>(), "y");
  check_equal(dx.to_vector<double>(), dx_manual.to_vector<double>(), "dx");
  check_equal(fc1->weight().grad.to_vector<double>(), a->parameters()[0]->grad.to_vector<double>(), "dW1");
  CHECK_THROWS_AS(seq[3], InvalidArgument);
  CHECK_THROWS_AS(nn::Sequential({nullptr}), InvalidArgument);
}

TEST_CASE("ReLU's errors start with the layer", "[nn]") {
  nn::ReLU relu;
  CHECK_THROWS_MATCHES(relu.forward(Tensor::zeros(Shape{2, 3}, DType::Int64, test_device())), InvalidArgument,
                       MessageIs("ReLU(): input has dtype int64, expected float32 or float64"));
  relu.forward(Tensor::zeros(Shape{2, 3}, DType::Float32, test_device()));
  CHECK_THROWS_MATCHES(relu.backward(Tensor::zeros(Shape{2, 3}, DType::Float64, test_device())), InvalidArgument,
                       MessageIs("ReLU(): grad_output is float64 on " + test_device().str() + ", expected float32 on " +
                                 test_device().str() + " (as the output)"));
}
