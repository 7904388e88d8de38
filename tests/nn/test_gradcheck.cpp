// Every layer's and loss's backward against central finite differences in float64.

#include <catch2/catch.hpp>

#include <memory>

#include "support/device_under_test.hpp"
#include "support/gradcheck.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/loss.hpp"
#include "syncbn/nn/sequential.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::check_module_gradients;
using syncbn::testing::numeric_gradient;
using syncbn::testing::test_device;

namespace {

Tensor input(const Shape& shape, std::uint64_t seed) {
  return Tensor::randn(shape, syncbn::testing::kSeed + seed, DType::Float64, test_device(), 0.5, 1.5);
}

nn::BatchNormOptions bn64(bool affine = true) {
  nn::BatchNormOptions o;
  o.affine = affine;
  o.dtype = DType::Float64;
  o.device = test_device();
  return o;
}

}  // namespace

TEST_CASE("Linear's gradients match finite differences", "[nn]") {
  nn::Linear layer(4, 3, nn::LinearOptions{true, 11, DType::Float64, test_device()});
  check_module_gradients(layer, input(Shape{5, 4}, 1), 101);
}

TEST_CASE("ReLU's and Flatten's gradients match finite differences", "[nn]") {
  nn::ReLU relu;
  check_module_gradients(relu, input(Shape{3, 7}, 2), 102);
  nn::Flatten flatten;
  check_module_gradients(flatten, input(Shape{2, 3, 2}, 3), 103);
}

TEST_CASE("BatchNorm's gradients match finite differences in training and eval", "[nn]") {
  const bool training = GENERATE(true, false);
  const bool affine = GENERATE(true, false);
  CAPTURE(training, affine);
  {
    nn::BatchNorm1d bn(3, bn64(affine));
    if (affine) bn.weight().value.copy_(Tensor::from_vector(std::vector<double>{0.5, 2.0, -1.0}, Shape{3}, test_device()));
    bn.train(training);
    check_module_gradients(bn, input(Shape{6, 3}, 4), 104);
  }
  {
    nn::BatchNorm2d bn(2, bn64(affine));
    bn.train(training);
    check_module_gradients(bn, input(Shape{3, 2, 2, 3}, 5), 105);
  }
  {
    nn::BatchNorm3d bn(2, bn64(affine));
    bn.train(training);
    check_module_gradients(bn, input(Shape{2, 2, 2, 2, 2}, 6), 106);
  }
}

TEST_CASE("A Sequential MLP's gradients match finite differences", "[nn]") {
  nn::Sequential net({std::make_shared<nn::Linear>(4, 6, nn::LinearOptions{true, 1, DType::Float64, test_device()}),
                      std::make_shared<nn::BatchNorm1d>(6, bn64()), std::make_shared<nn::ReLU>(),
                      std::make_shared<nn::Linear>(6, 2, nn::LinearOptions{true, 2, DType::Float64, test_device()})});
  check_module_gradients(net, input(Shape{5, 4}, 7), 107);
}

TEST_CASE("The losses' gradients match finite differences", "[nn]") {
  const Tensor x = input(Shape{4, 3}, 8);
  std::vector<double> xv = x.to_vector<double>();
  {
    const Tensor t = input(Shape{4, 3}, 9);
    nn::MSELoss loss;
    loss.forward(x, t);
    const Tensor g = loss.backward();
    auto f = [&] { return nn::MSELoss().forward(Tensor::from_vector(xv, x.shape(), test_device()), t).item(); };
    check_close(g, numeric_gradient(xv, f), {1e-6, 1e-8}, "MSELoss");
  }
  {
    const Tensor t = Tensor::from_vector(std::vector<std::int64_t>{2, 0, 1, 1}, Shape{4}, test_device());
    nn::CrossEntropyLoss loss;
    loss.forward(x, t);
    const Tensor g = loss.backward();
    auto f = [&] { return nn::CrossEntropyLoss().forward(Tensor::from_vector(xv, x.shape(), test_device()), t).item(); };
    check_close(g, numeric_gradient(xv, f), {1e-6, 1e-8}, "CrossEntropyLoss");
  }
}
