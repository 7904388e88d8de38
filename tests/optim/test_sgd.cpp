// SGD against PyTorch's update rule computed by hand.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/optim/sgd.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

struct Case {
  const char* name;
  optim::SGDOptions options;
};

}  // namespace

TEST_CASE("SGD follows PyTorch's update rule over several steps", "[nn]") {
  const Case c = GENERATE(Case{"plain", {0.1, 0, 0, 0, false}}, Case{"momentum", {0.1, 0.9, 0, 0, false}},
                          Case{"dampening", {0.05, 0.9, 0.3, 0, false}}, Case{"weight decay", {0.1, 0, 0, 0.01, false}},
                          Case{"nesterov", {0.1, 0.8, 0, 1e-3, true}});
  CAPTURE(c.name, syncbn::testing::kSeed);
  nn::Linear layer(3, 2, nn::LinearOptions{true, 3, DType::Float64, test_device()});
  optim::SGD sgd(layer.parameters(), c.options);
  const auto& o = c.options;
  std::vector<std::vector<double>> p, buf(2);
  for (auto* q : layer.parameters()) p.push_back(q->value.to_vector<double>());
  for (int step = 0; step < 4; ++step) {
    std::size_t j = 0;
    for (auto* q : layer.parameters()) {
      q->grad.copy_(Tensor::randn(q->grad.shape(), syncbn::testing::kSeed + 10 * static_cast<std::uint64_t>(step) + j,
                                  DType::Float64, test_device()));
      const auto g0 = q->grad.to_vector<double>();
      for (std::size_t i = 0; i < g0.size(); ++i) {
        double g = g0[i] + o.weight_decay * p[j][i];
        if (o.momentum != 0) {
          if (step == 0) buf[j].push_back(g);
          else buf[j][i] = o.momentum * buf[j][i] + (1 - o.dampening) * g;
          g = o.nesterov ? g + o.momentum * buf[j][i] : buf[j][i];
        }
        p[j][i] -= o.lr * g;
      }
      ++j;
    }
    sgd.step();
    std::size_t k = 0;
    for (auto* q : layer.parameters()) check_close(q->value, p[k++], {1e-12, 1e-12}, "parameter after a step");
  }
  sgd.zero_grad();
  CHECK(layer.weight().grad.to_vector<double>() == std::vector<double>(6, 0.0));
}

TEST_CASE("SGD rejects invalid options", "[nn]") {
  nn::Linear layer(2, 2);
  CHECK_THROWS_MATCHES(optim::SGD(layer.parameters(), {-0.1}), InvalidArgument, MessageIs("SGD: lr is -0.1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::SGD(layer.parameters(), {0.1, 0, 0, 0, true}), InvalidArgument,
                       MessageIs("SGD: nesterov needs momentum and no dampening, got momentum 0 and dampening 0, expected momentum > 0 "
                                 "and dampening 0"));
  CHECK_THROWS_AS(optim::SGD({nullptr}, {0.1}), InvalidArgument);
}

TEST_CASE("SGD checks every parameter before updating any", "[nn]") {
  const Device dev = test_device();
  nn::Parameter a{Tensor::ones(Shape{3}, DType::Float32, dev), Tensor::ones(Shape{3}, DType::Float32, dev)};
  nn::Parameter b{Tensor::ones(Shape{2}, DType::Float32, dev), Tensor::ones(Shape{2}, DType::Float32, dev)};
  optim::SGD sgd({&a, &b}, optim::SGDOptions{.lr = 0.5, .momentum = 0.9});
  b.grad = Tensor::ones(Shape{5}, DType::Float32, dev);  // a bad gradient on the second parameter
  CHECK_THROWS_MATCHES(sgd.step(), InvalidArgument,
                       MessageIs("SGD::step: the gradient of parameter 1 is float32 (5) on " + dev.str() +
                                 ", expected float32 (2) on " + dev.str() + " (its value's)"));
  CHECK(a.value.to_vector<double>() == std::vector<double>{1, 1, 1});  // untouched
  b.grad = Tensor::ones(Shape{2}, DType::Float32, dev);
  sgd.step();
  CHECK(a.value.to_vector<double>() == std::vector<double>{0.5, 0.5, 0.5});
}

TEST_CASE("An optimizer made before convert_sync_batchnorm keeps training the converted layers", "[nn]") {
  CAPTURE(syncbn::testing::kSeed);
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(3, 4, nn::LinearOptions{true, 1, DType::Float32, test_device()}));
  auto bn = std::make_shared<nn::BatchNorm1d>(4, nn::BatchNormOptions{.device = test_device()});
  model->add(bn);
  model->add(std::make_shared<nn::Linear>(4, 2, nn::LinearOptions{true, 2, DType::Float32, test_device()}));
  optim::SGD sgd(model->parameters(), optim::SGDOptions{.lr = 0.5});
  nn::Parameter* const weight_before = &bn->weight();
  bn.reset();
  auto converted = nn::convert_sync_batchnorm(model);  // the old layer is gone after this
  auto& sync = dynamic_cast<nn::SyncBatchNorm1d&>(*converted->children()[1].second);
  CHECK(&sync.weight() == weight_before);  // the same Parameter object
  const auto weight = sync.weight().value.to_vector<double>();
  const Tensor x = Tensor::randn(Shape{8, 3}, syncbn::testing::kSeed, DType::Float32, test_device());
  const Tensor y = converted->forward(x);
  converted->backward(Tensor::randn(y.shape(), syncbn::testing::kSeed + 1, DType::Float32, test_device()));
  sgd.step();
  CHECK(sync.weight().value.to_vector<double>() != weight);  // the optimizer moved the converted layer's weight
}

TEST_CASE("SGD applies each parameter group's lr and weight decay, and lrs set between steps", "[optim]") {
  CAPTURE(syncbn::testing::kSeed);
  const Device dev = test_device();
  nn::Parameter a{Tensor::randn(Shape{4}, syncbn::testing::kSeed, DType::Float64, dev), Tensor::zeros(Shape{4}, DType::Float64, dev)};
  nn::Parameter b{Tensor::randn(Shape{3}, syncbn::testing::kSeed + 1, DType::Float64, dev), Tensor::zeros(Shape{3}, DType::Float64, dev)};
  // Group 0 takes the defaults, group 1 its own lr and no weight decay.
  optim::SGD sgd(optim::ParamGroups{{{&a}}, {{&b}, 0.5, 0.0}}, optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01});
  REQUIRE(sgd.param_groups().size() == 2);
  CHECK(sgd.param_groups()[0].lr == 0.1);
  CHECK(sgd.param_groups()[0].weight_decay == 0.01);
  CHECK(sgd.param_groups()[1].lr == 0.5);
  CHECK(sgd.param_groups()[1].weight_decay == 0.0);
  CHECK(sgd.num_params() == 2);
  nn::Parameter* params[] = {&a, &b};
  std::vector<std::vector<double>> p{a.value.to_vector<double>(), b.value.to_vector<double>()}, buf(2);
  for (int step = 0; step < 4; ++step) {
    if (step == 2) sgd.set_lr(0.2);     // every group
    if (step == 3) sgd.set_lr(1, 0.05);  // one group
    for (std::size_t j = 0; j < 2; ++j) {
      params[j]->grad.copy_(Tensor::randn(params[j]->grad.shape(), syncbn::testing::kSeed + 10 * static_cast<std::uint64_t>(step) + j,
                                          DType::Float64, dev));
      const auto g0 = params[j]->grad.to_vector<double>();
      const double lr = sgd.param_groups()[j].lr, wd = sgd.param_groups()[j].weight_decay;
      for (std::size_t i = 0; i < g0.size(); ++i) {
        const double g = g0[i] + wd * p[j][i];
        if (step == 0) buf[j].push_back(g);
        else buf[j][i] = 0.9 * buf[j][i] + g;
        p[j][i] -= lr * buf[j][i];
      }
    }
    sgd.step();
    check_close(a.value, p[0], {1e-12, 1e-12}, "group 0's parameter after step " + std::to_string(step));
    check_close(b.value, p[1], {1e-12, 1e-12}, "group 1's parameter after step " + std::to_string(step));
  }
  CHECK(sgd.param_groups()[0].lr == 0.2);
  CHECK(sgd.param_groups()[1].lr == 0.05);
}

TEST_CASE("SGD's lr reads and sets every group's learning rate, and refuses bad ones unchanged", "[optim]") {
  nn::Linear layer(2, 2, nn::LinearOptions{.device = test_device()});
  optim::SGD sgd(layer.parameters(), optim::SGDOptions{.lr = 0.1});
  CHECK(sgd.lr() == 0.1);
  sgd.set_lr(0.25);
  CHECK(sgd.lr() == 0.25);
  CHECK(sgd.param_groups()[0].lr == 0.25);
  CHECK_THROWS_MATCHES(sgd.set_lr(-1.0), InvalidArgument, MessageIs("SGD::set_lr: lr is -1, expected >= 0"));
  CHECK_THROWS_MATCHES(sgd.set_lr(1, 0.5), InvalidArgument,
                       MessageIs("SGD::set_lr: group 1 does not exist, expected a group below 1"));
  CHECK_THROWS_MATCHES(sgd.set_lr(0, std::nan("")), InvalidArgument, MessageIs("SGD::set_lr: lr is nan, expected >= 0"));
  CHECK(sgd.lr() == 0.25);

  optim::SGD two(optim::ParamGroups{{{&layer.weight()}}, {{&layer.bias()}, 0.5}}, optim::SGDOptions{.lr = 0.1});
  CHECK_THROWS_MATCHES(two.lr(), InvalidArgument,
                       MessageIs("SGD::lr: group 1 has lr 0.5 and group 0 has lr 0.1, expected one lr for all groups "
                                 "(read param_groups()[i].lr)"));
  two.set_lr(0.3);
  CHECK(two.lr() == 0.3);
}

TEST_CASE("SGD rejects bad parameter groups", "[optim]") {
  nn::Linear layer(2, 2, nn::LinearOptions{.device = test_device()});
  nn::Parameter* w = &layer.weight();
  CHECK_THROWS_MATCHES(optim::SGD(optim::ParamGroups{{{w}}, {{w}}}, {0.1}), InvalidArgument,
                       MessageIs("SGD: parameter 1 is parameter 0 again, expected every parameter once"));
  CHECK_THROWS_MATCHES(optim::SGD(std::vector<nn::Parameter*>{w, w}, {0.1}), InvalidArgument,
                       MessageIs("SGD: parameter 1 is parameter 0 again, expected every parameter once"));
  CHECK_THROWS_MATCHES(optim::SGD(optim::ParamGroups{{{w}, -0.1}}, {0.1}), InvalidArgument,
                       MessageIs("SGD: group 0 has lr -0.1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::SGD(optim::ParamGroups{{{w}, 0.1, -1.0}}, {0.1}), InvalidArgument,
                       MessageIs("SGD: group 0 has weight_decay -1, expected >= 0"));
  // An empty group is allowed (split_weight_decay may give one).
  optim::SGD sgd(optim::ParamGroups{{{w}}, {{}}}, {0.1});
  CHECK(sgd.num_params() == 1);
  sgd.step();
}
