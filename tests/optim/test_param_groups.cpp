// split_weight_decay: which parameters decay and which do not, and that the
// exempted ones are untouched by weight decay. Device-generic.

#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/optim/adam.hpp"
#include "syncbn/optim/param_groups.hpp"
#include "syncbn/optim/sgd.hpp"

using namespace syncbn;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

// Linear(4, 8) -> BatchNorm1d(8) -> ReLU -> Linear(8, 2): parameters 0.weight,
// 0.bias, 1.weight, 1.bias, 3.weight, 3.bias.
std::shared_ptr<nn::Sequential> make_model() {
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(4, 8, nn::LinearOptions{true, 1, DType::Float32, test_device()}));
  model->add(std::make_shared<nn::BatchNorm1d>(8, nn::BatchNormOptions{.device = test_device()}));
  model->add(std::make_shared<nn::ReLU>());
  model->add(std::make_shared<nn::Linear>(8, 2, nn::LinearOptions{true, 2, DType::Float32, test_device()}));
  return model;
}

// The names of a group's parameters, looked up in the model.
std::vector<std::string> names_of(nn::Module& model, const optim::ParamGroup& group) {
  std::vector<std::string> out;
  for (nn::Parameter* p : group.params)
    for (const auto& [name, q] : model.named_parameters())
      if (q == p) out.push_back(name);
  return out;
}

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("split_weight_decay puts batch-norm parameters and biases in a group without decay", "[optim]") {
  auto model = make_model();
  const optim::ParamGroups groups = optim::split_weight_decay(*model, 0.05);
  REQUIRE(groups.size() == 2);
  CHECK(names_of(*model, groups[0]) == Names{"0.weight", "3.weight"});
  CHECK(groups[0].weight_decay == 0.05);
  CHECK_FALSE(groups[0].lr.has_value());
  CHECK(names_of(*model, groups[1]) == Names{"0.bias", "1.weight", "1.bias", "3.bias"});
  CHECK(groups[1].weight_decay == 0.0);
  CHECK_FALSE(groups[1].lr.has_value());
}

TEST_CASE("split_weight_decay exempts what it is asked to", "[optim]") {
  auto model = make_model();
  auto norm = optim::split_weight_decay(*model, 0.1, optim::NoDecay::Norm);
  CHECK(names_of(*model, norm[0]) == Names{"0.weight", "0.bias", "3.weight", "3.bias"});
  CHECK(names_of(*model, norm[1]) == Names{"1.weight", "1.bias"});
  auto bias = optim::split_weight_decay(*model, 0.1, optim::NoDecay::Bias);
  CHECK(names_of(*model, bias[0]) == Names{"0.weight", "1.weight", "3.weight"});
  CHECK(names_of(*model, bias[1]) == Names{"0.bias", "1.bias", "3.bias"});
  auto none = optim::split_weight_decay(*model, 0.1, optim::NoDecay::None);
  CHECK(none[0].params.size() == 6);
  CHECK(none[1].params.empty());
}

TEST_CASE("split_weight_decay recognises synchronized batch norm, also after convert_sync_batchnorm", "[optim]") {
  auto converted = nn::convert_sync_batchnorm(make_model());
  REQUIRE(dynamic_cast<nn::SyncBatchNorm1d*>(converted->children()[1].second.get()) != nullptr);
  const auto groups = optim::split_weight_decay(*converted, 0.05, optim::NoDecay::Norm);
  CHECK(names_of(*converted, groups[1]) == Names{"1.weight", "1.bias"});

  // A model built with SyncBatchNorm2d directly, nested in a named block.
  auto block = std::make_shared<nn::Sequential>();
  block->add("bn", std::make_shared<nn::SyncBatchNorm2d>(3, nn::BatchNormOptions{.device = test_device()}));
  nn::Sequential model;
  model.add(std::make_shared<nn::Linear>(3, 3, nn::LinearOptions{false, 1, DType::Float32, test_device()}));
  model.add("block", block);
  const auto nested = optim::split_weight_decay(model, 0.05);
  CHECK(names_of(model, nested[0]) == Names{"0.weight"});
  CHECK(names_of(model, nested[1]) == Names{"block.bn.weight", "block.bn.bias"});
}

TEST_CASE("Parameters without decay are unchanged by weight decay", "[optim]") {
  // Zero gradients: each decayed parameter moves by its decay alone, each
  // exempted parameter not at all (bit for bit).
  const bool adamw = GENERATE(false, true);
  CAPTURE(adamw, syncbn::testing::kSeed);
  auto model = make_model();
  const double lr = 0.1, wd = 0.5;
  std::unique_ptr<optim::Optimizer> opt;
  if (adamw) {
    opt = std::make_unique<optim::AdamW>(optim::split_weight_decay(*model, wd), optim::AdamWOptions{.lr = lr});
  } else {
    opt = std::make_unique<optim::SGD>(optim::split_weight_decay(*model, wd), optim::SGDOptions{.lr = lr, .momentum = 0.9});
  }
  std::vector<std::vector<double>> before;
  for (nn::Parameter* p : model->parameters()) before.push_back(p->value.to_vector<double>());
  opt->zero_grad();
  opt->step();
  opt->step();
  const auto named = model->named_parameters();
  for (std::size_t k = 0; k < named.size(); ++k) {
    const auto& [name, p] = named[k];
    const bool decays = name == "0.weight" || name == "3.weight";
    CAPTURE(name);
    const auto after = p->value.to_vector<double>();
    for (std::size_t i = 0; i < after.size(); ++i) {
      if (!decays) {
        CHECK(after[i] == before[k][i]);
      } else {
        // Two steps of p *= 1 - lr * wd (AdamW), or of SGD's momentum on the
        // decay term: p1 = p (1 - lr wd), p2 = p1 - lr (0.9 wd p + wd p1).
        const double p0 = before[k][i];
        const double p1 = p0 * (1 - lr * wd);
        const double want = adamw ? p1 * (1 - lr * wd) : p1 - lr * (0.9 * wd * p0 + wd * p1);
        CHECK_THAT(after[i], Catch::Matchers::WithinRel(want, 1e-5) || Catch::Matchers::WithinAbs(want, 1e-6));
      }
    }
  }
}

TEST_CASE("split_weight_decay rejects a negative weight decay and unknown flags", "[optim]") {
  auto model = make_model();
  CHECK_THROWS_MATCHES(optim::split_weight_decay(*model, -0.1), InvalidArgument,
                       MessageIs("split_weight_decay: weight_decay is -0.1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::split_weight_decay(*model, 0.1, static_cast<optim::NoDecay>(4)), InvalidArgument,
                       MessageIs("split_weight_decay: exempt is 4, expected a combination of NoDecay::Norm (1) and "
                                 "NoDecay::Bias (2)"));
}
