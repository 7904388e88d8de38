// SGD against PyTorch's update rule computed by hand.

#include <catch2/catch.hpp>

#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/linear.hpp"
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
                       MessageIs("SGD: nesterov needs momentum > 0 and dampening 0, got momentum 0 and dampening 0"));
  CHECK_THROWS_AS(optim::SGD({nullptr}, {0.1}), InvalidArgument);
}
