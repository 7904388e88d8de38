// resnet(): the network with and without batch norm.

#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/seeds.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/checkpoint.hpp"
#include "syncbn/nn/resnet.hpp"

using namespace syncbn;
using syncbn::testing::check_equal;
using syncbn::testing::test_device;

namespace {

nn::ResNetOptions small_resnet(bool batch_norm) {
  nn::ResNetOptions options;
  options.widths = {4, 8};
  options.blocks_per_stage = 1;
  options.batch_norm = batch_norm;
  options.seed = 7;
  options.device = test_device();
  return options;
}

bool is_batch_norm_name(const std::string& name) {
  return name.find("bn") != std::string::npos || name.find("downsample.1") != std::string::npos;
}

}  // namespace

TEST_CASE("A ResNet without batch norm has an Identity where each batch norm was, and the same weights", "[nn]") {
  auto with_bn = nn::resnet(small_resnet(true));
  auto without_bn = nn::resnet(small_resnet(false));

  // Every batch norm of the normalised network is an Identity at the same path.
  std::vector<std::string> norm_paths, identity_paths;
  for (const auto& [path, module] : with_bn->named_modules())
    if (dynamic_cast<nn::BatchNorm*>(module) != nullptr) norm_paths.push_back(path);
  for (const auto& [path, module] : without_bn->named_modules()) {
    CHECK(dynamic_cast<nn::BatchNorm*>(module) == nullptr);
    if (dynamic_cast<nn::Identity*>(module) != nullptr) identity_paths.push_back(path);
  }
  CHECK(norm_paths == std::vector<std::string>{"bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2",
                                               "layer2.0.downsample.1"});
  CHECK(identity_paths == norm_paths);

  // The checkpoint lacks exactly the batch norms' entries; the convolutions
  // and the classifier start from the same values (the seeds do not depend
  // on the option).
  std::vector<std::pair<std::string, Tensor>> kept;
  for (auto& entry : nn::state_dict(*with_bn))
    if (!is_batch_norm_name(entry.first)) kept.push_back(entry);
  const auto plain = nn::state_dict(*without_bn);
  REQUIRE(plain.size() == kept.size());
  for (std::size_t i = 0; i < plain.size(); ++i) {
    CAPTURE(kept[i].first);
    CHECK(plain[i].first == kept[i].first);
    check_equal(plain[i].second.to_vector<float>(), kept[i].second.to_vector<float>(), kept[i].first);
  }
}

TEST_CASE("A ResNet without batch norm trains forward and backward like any other network", "[nn]") {
  auto net = nn::resnet(small_resnet(false));
  CAPTURE(syncbn::testing::kSeed);
  const Tensor x = Tensor::randn(Shape{3, 1, 8, 8}, syncbn::testing::kSeed, DType::Float32, test_device());
  const Tensor logits = net->forward(x);
  CHECK(logits.shape() == Shape{3, 10});
  // One sample per batch is fine without batch norm (it would be refused
  // with it in training: one value per channel).
  CHECK(net->forward(x.rows(0, 1)).shape() == Shape{1, 10});
  net->forward(x);
  const Tensor dx = net->backward(Tensor::ones(Shape{3, 10}, DType::Float32, test_device()));
  CHECK(dx.shape() == x.shape());
  double grad_norm = 0;
  for (nn::Parameter* p : net->parameters())
    for (float g : p->grad.to_vector<float>()) grad_norm += static_cast<double>(g) * g;
  CHECK(grad_norm > 0);
}
