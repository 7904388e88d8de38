// resnet(): the network with and without batch norm, and in either layout.

#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/convolutions.hpp"
#include "support/skip.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/checkpoint.hpp"
#include "syncbn/nn/loss.hpp"
#include "syncbn/nn/resnet.hpp"
#include "syncbn/optim/sgd.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
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

TEST_CASE("A channels-last ResNet equals the NCHW one: outputs, gradients, running statistics, steps of SGD",
          "[nn][conv][channels-last]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const DType dtype = GENERATE(DType::Float64, DType::Float32);
  CAPTURE(syncbn::testing::kSeed, dtype);
  // float64: only the orders of the sums differ; float32 adds their rounding.
  const syncbn::testing::Tolerance tol = dtype == DType::Float64 ? syncbn::testing::Tolerance{1e-10, 1e-11}
                                                                 : syncbn::testing::Tolerance{2e-4, 2e-5};
  nn::ResNetOptions options = small_resnet(true);
  options.in_channels = 3;
  options.dtype = dtype;
  auto first = nn::resnet(options);
  options.layout = core::ChannelLayout::Last;
  auto last = nn::resnet(options);
  for (const auto& [path, module] : last->named_modules())
    if (path == "layer2.0") CHECK(module->describe() == "BasicBlock(4, 8, stride=2, channels_last)");

  // The same parameters and buffers under the same names: a checkpoint does
  // not depend on the layout.
  const auto same_state = [&](const std::string& when) {
    const auto a = nn::state_dict(*first), b = nn::state_dict(*last);
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].first == b[i].first);
      CHECK(a[i].second.shape() == b[i].second.shape());
      check_close(b[i].second, a[i].second.to_vector<double>(), tol, when + ": " + a[i].first);
    }
  };
  same_state("at the start");

  optim::SGD sgd_first(first->parameters(), optim::SGDOptions{0.05, 0.9});
  optim::SGD sgd_last(last->parameters(), optim::SGDOptions{0.05, 0.9});
  nn::CrossEntropyLoss loss_first, loss_last;
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    const Tensor x = Tensor::randn(Shape{6, 3, 9, 9}, syncbn::testing::kSeed + 70 + static_cast<std::uint64_t>(step),
                                   dtype, test_device(), 0.3, 1.2);
    std::vector<std::int64_t> labels;
    for (std::int64_t i = 0; i < 6; ++i) labels.push_back((i * 7 + step) % 10);
    const Tensor t = Tensor::from_vector(labels, Shape{6}, test_device());
    sgd_first.zero_grad();
    sgd_last.zero_grad();
    const Tensor y_first = first->forward(x);
    const Tensor y_last = last->forward(core::to_channels_last(x));
    check_close(y_last, y_first.to_vector<double>(), tol, "output");
    loss_first.forward(y_first, t);
    loss_last.forward(y_last, t);
    const Tensor dx_first = first->backward(loss_first.backward());
    const Tensor dx_last = last->backward(loss_last.backward());
    REQUIRE(dx_last.shape() == Shape{6, 9, 9, 3});
    check_close(core::to_channels_first(dx_last), dx_first.to_vector<double>(), tol, "input gradient");
    const auto got = last->named_parameters(), want = first->named_parameters();
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
      check_close(got[i].second->grad, want[i].second->grad.to_vector<double>(), tol, "gradient of " + got[i].first);
    sgd_first.step();
    sgd_last.step();
  }
  same_state("after three steps");  // weights and running statistics

  // Eval on the running statistics; and the NCHW network's checkpoint
  // loaded into a fresh channels-last one gives the same outputs.
  first->eval();
  last->eval();
  const Tensor x = Tensor::randn(Shape{4, 3, 9, 9}, syncbn::testing::kSeed + 80, dtype, test_device());
  const std::vector<double> want = first->forward(x).to_vector<double>();
  check_close(last->forward(core::to_channels_last(x)), want, tol, "eval output");
  options.seed = 99;
  auto loaded = nn::resnet(options);
  nn::load_state_dict(*loaded, nn::state_dict(*first));
  loaded->eval();
  check_close(loaded->forward(core::to_channels_last(x)), want, tol, "eval output after loading");
}

TEST_CASE("A ResNet's batch norms fuse the ReLU after them and equal separate ReLUs bit for bit, in either layout",
          "[nn][conv][activation]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const core::ChannelLayout layout = GENERATE(core::ChannelLayout::First, core::ChannelLayout::Last);
  CAPTURE(syncbn::testing::kSeed, dtype, core::channel_layout_name(layout));
  nn::ResNetOptions options = small_resnet(true);
  options.in_channels = 3;
  options.dtype = dtype;
  options.layout = layout;
  auto fused = nn::resnet(options);
  options.fused_relu = false;
  auto separate = nn::resnet(options);

  // Where a ReLU follows a batch norm, the batch norm applies it and the
  // relu child is an Identity; the separate form keeps torchvision's ReLUs.
  int fused_count = 0;
  for (const auto& [path, module] : fused->named_modules()) {
    if (path == "relu" || path.ends_with(".relu")) CHECK(module->describe() == "Identity()");
    if (auto* bn = dynamic_cast<nn::BatchNorm*>(module)) {
      const bool first_of_pair = path == "bn1" || path.ends_with(".bn1");
      CHECK((bn->options().activation.kind == core::ActivationKind::Relu) == first_of_pair);
      fused_count += first_of_pair ? 1 : 0;
    }
  }
  CHECK(fused_count == 3);  // the stem's and the two blocks'
  for (const auto& [path, module] : separate->named_modules()) {
    if (path == "relu" || path.ends_with(".relu")) CHECK(module->describe() == "ReLU()");
    if (auto* bn = dynamic_cast<nn::BatchNorm*>(module))
      CHECK(bn->options().activation.kind == core::ActivationKind::Identity);
  }

  optim::SGD sgd_fused(fused->parameters(), optim::SGDOptions{0.05, 0.9});
  optim::SGD sgd_separate(separate->parameters(), optim::SGDOptions{0.05, 0.9});
  nn::CrossEntropyLoss loss_fused, loss_separate;
  const bool last = layout == core::ChannelLayout::Last;
  for (int step = 0; step < 2; ++step) {
    CAPTURE(step);
    Tensor x = Tensor::randn(Shape{6, 3, 9, 9}, syncbn::testing::kSeed + 90 + static_cast<std::uint64_t>(step), dtype,
                             test_device(), 0.3, 1.2);
    if (last) x = core::to_channels_last(x);
    std::vector<std::int64_t> labels;
    for (std::int64_t i = 0; i < 6; ++i) labels.push_back((i * 3 + step) % 10);
    const Tensor t = Tensor::from_vector(labels, Shape{6}, test_device());
    sgd_fused.zero_grad();
    sgd_separate.zero_grad();
    const Tensor y_fused = fused->forward(x);
    const Tensor y_separate = separate->forward(x);
    CHECK(y_fused.to_vector<double>() == y_separate.to_vector<double>());
    loss_fused.forward(y_fused, t);
    loss_separate.forward(y_separate, t);
    CHECK(fused->backward(loss_fused.backward()).to_vector<double>() ==
          separate->backward(loss_separate.backward()).to_vector<double>());
    const auto got = fused->named_parameters(), want = separate->named_parameters();
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CAPTURE(got[i].first);
      CHECK(got[i].first == want[i].first);
      CHECK(got[i].second->grad.to_vector<double>() == want[i].second->grad.to_vector<double>());
    }
    sgd_fused.step();
    sgd_separate.step();
  }
  // The same checkpoint: names, weights and running statistics.
  const auto a = nn::state_dict(*fused), b = nn::state_dict(*separate);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(a[i].second.to_vector<double>() == b[i].second.to_vector<double>());
  }
}

TEST_CASE("A channels-last ResNet names the layout it expects when given another", "[nn][conv][channels-last]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  nn::ResNetOptions options = small_resnet(true);
  options.in_channels = 3;
  options.layout = core::ChannelLayout::Last;
  auto net = nn::resnet(options);
  const Tensor nchw = Tensor::zeros(Shape{2, 3, 8, 8}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(net->forward(nchw), InvalidArgument,
                       syncbn::testing::MessageIs("Conv2d(3, 4, kernel_size=3, padding=1, bias=false, channels_last): "
                                                  "input has 8 channels, expected 3"));
  options.layout = static_cast<core::ChannelLayout>(7);
  CHECK_THROWS_MATCHES(nn::resnet(options), InvalidArgument,
                       syncbn::testing::MessageIs("resnet: layout 7, expected ChannelLayout::First or Last"));
}
