// Conv2d, the pooling layers, Residual, BasicBlock and resnet(): gradients
// against central finite differences in float64, initialisation, options,
// names and errors. Device-generic (every CPU level; cuda:0).

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "support/convolutions.hpp"
#include "support/device_under_test.hpp"
#include "support/gradcheck.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/conv.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/pooling.hpp"
#include "syncbn/nn/residual.hpp"
#include "syncbn/nn/resnet.hpp"
#include "syncbn/nn/sequential.hpp"

using namespace syncbn;
using syncbn::testing::check_module_gradients;
using syncbn::testing::kSeed;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

Tensor input(const Shape& shape, std::uint64_t seed) {
  return Tensor::randn(shape, kSeed + seed, DType::Float64, test_device(), 0.5, 1.5);
}

nn::Conv2dOptions conv64(std::uint64_t seed) {
  nn::Conv2dOptions o;
  o.seed = seed;
  o.dtype = DType::Float64;
  o.device = test_device();
  return o;
}

}  // namespace

TEST_CASE("Conv2d's gradients match finite differences for every option", "[nn][conv]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  struct Case {
    std::int64_t in, out;
    nn::Size2 kernel, stride, padding, dilation;
    std::int64_t groups;
    bool bias;
  };
  const Case c = GENERATE(Case{2, 3, 3, 1, 1, 1, 1, true}, Case{2, 4, {3, 2}, {2, 1}, {1, 0}, 1, 2, false},
                          Case{3, 2, 1, 1, 0, 1, 1, true}, Case{4, 4, 3, 2, 2, 2, 4, true},
                          Case{2, 2, 2, 1, 0, {1, 2}, 1, false});
  const core::ChannelLayout layout = GENERATE(core::ChannelLayout::First, core::ChannelLayout::Last);
  CAPTURE(c.in, c.out, c.kernel.str(), c.stride.str(), c.padding.str(), c.dilation.str(), c.groups, c.bias,
          core::channel_layout_name(layout));
  nn::Conv2dOptions o = conv64(7);
  o.layout = layout;
  o.stride = c.stride;
  o.padding = c.padding;
  o.dilation = c.dilation;
  o.groups = c.groups;
  o.bias = c.bias;
  nn::Conv2d conv(c.in, c.out, c.kernel, o);
  const bool last = layout == core::ChannelLayout::Last;
  check_module_gradients(conv, input(last ? Shape{2, 5, 6, c.in} : Shape{2, c.in, 5, 6}, 1), 201);
}

TEST_CASE("Pooling layers' gradients match finite differences", "[nn][pool]") {
  // Distinct values keep max pooling away from ties, where it has no derivative.
  std::vector<double> values(2 * 3 * 6 * 5);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = std::sin(1.7 * static_cast<double>(i) + 0.3) * 3.0;
  const core::ChannelLayout layout = GENERATE(core::ChannelLayout::First, core::ChannelLayout::Last);
  CAPTURE(core::channel_layout_name(layout));
  const bool last = layout == core::ChannelLayout::Last;
  const Tensor x = Tensor::from_vector(values, last ? Shape{2, 6, 5, 3} : Shape{2, 3, 6, 5}, test_device());
  nn::MaxPool2dOptions max_options;
  max_options.layout = layout;
  max_options.stride = nn::Size2(2, 1);
  max_options.padding = 1;
  max_options.ceil_mode = true;
  nn::MaxPool2d max_pool(3, max_options);
  check_module_gradients(max_pool, x, 202);
  nn::AvgPool2dOptions avg_options;
  avg_options.padding = 1;
  avg_options.count_include_pad = false;
  avg_options.layout = layout;
  nn::AvgPool2d avg_pool(nn::Size2(3, 2), avg_options);
  check_module_gradients(avg_pool, x, 203);
  nn::AdaptiveAvgPool2d global(1, layout);
  check_module_gradients(global, x, 204);
  nn::AdaptiveAvgPool2d overlapping(nn::Size2(4, 3), layout);
  check_module_gradients(overlapping, x, 205);
}

TEST_CASE("Pooling layers default the stride to the kernel size and describe their options", "[nn][pool]") {
  nn::MaxPool2d max_pool(2);
  CHECK(max_pool.describe() == "MaxPool2d(kernel_size=2, stride=2, padding=0)");
  CHECK(max_pool.forward(input(Shape{1, 1, 6, 4}, 2)).shape() == Shape{1, 1, 3, 2});
  nn::AvgPool2d avg_pool(nn::Size2(3, 2), nn::AvgPool2dOptions{.stride = 1, .ceil_mode = true});
  CHECK(avg_pool.describe() == "AvgPool2d(kernel_size=(3, 2), stride=1, padding=0, ceil_mode=true)");
  CHECK(avg_pool.forward(input(Shape{1, 1, 6, 4}, 2)).shape() == Shape{1, 1, 4, 3});
  CHECK(nn::AdaptiveAvgPool2d(nn::Size2(2, 3)).describe() == "AdaptiveAvgPool2d(output_size=(2, 3))");
  // Channels-last: (N, H, W, C) in and out, said in the description.
  nn::MaxPool2d max_last(2, nn::MaxPool2dOptions{.layout = core::ChannelLayout::Last});
  CHECK(max_last.describe() == "MaxPool2d(kernel_size=2, stride=2, padding=0, channels_last)");
  CHECK(max_last.forward(input(Shape{1, 6, 4, 3}, 2)).shape() == Shape{1, 3, 2, 3});
  nn::AdaptiveAvgPool2d global_last(1, core::ChannelLayout::Last);
  CHECK(global_last.describe() == "AdaptiveAvgPool2d(output_size=1, channels_last)");
  CHECK(global_last.forward(input(Shape{2, 5, 4, 3}, 2)).shape() == Shape{2, 1, 1, 3});
}

TEST_CASE("Conv2d initialises uniformly in +-1/sqrt(fan_in) from its seed", "[nn][conv]") {
  nn::Conv2dOptions o;
  o.groups = 2;
  o.seed = 5;
  o.device = test_device();
  nn::Conv2d conv(4, 6, 3, o);
  CHECK(conv.weight().value.shape() == Shape{6, 2, 3, 3});
  const double bound = 1.0 / std::sqrt(2.0 * 9.0);
  double lo = 1e9, hi = -1e9;
  for (double v : conv.weight().value.to_vector<double>()) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  for (double v : conv.bias().value.to_vector<double>()) CHECK(std::abs(v) <= bound);
  CHECK(lo >= -bound);
  CHECK(hi <= bound);
  CHECK(hi - lo > bound);  // spread over the range, not a constant
  nn::Conv2d same(4, 6, 3, o);
  CHECK(same.weight().value.to_vector<double>() == conv.weight().value.to_vector<double>());
  CHECK(conv.describe() == "Conv2d(4, 6, kernel_size=3, groups=2)");
}

TEST_CASE("Conv2d rejects bad options and inputs, naming the layer", "[nn][conv]") {
  CHECK_THROWS_MATCHES(nn::Conv2d(3, 4, 3, nn::Conv2dOptions{.groups = 2}), InvalidArgument,
                       MessageIs("Conv2d: in_channels 3 and out_channels 4, expected both divisible by groups (2)"));
  CHECK_THROWS_MATCHES(nn::Conv2d(2, 4, nn::Size2(3, 0)), InvalidArgument,
                       MessageIs("Conv2d: kernel_size (3, 0), expected >= 1"));
  CHECK_THROWS_MATCHES(nn::Conv2d(2, 4, 3, nn::Conv2dOptions{.padding = -1}), InvalidArgument,
                       MessageIs("Conv2d: padding -1, expected >= 0"));
  nn::Conv2dOptions o;
  o.device = test_device();
  nn::Conv2d conv(2, 4, 3, o);
  CHECK_THROWS_MATCHES(conv.forward(Tensor::zeros(Shape{1, 3, 5, 5}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("Conv2d(2, 4, kernel_size=3): input has 3 channels, expected 2"));
  CHECK_THROWS_MATCHES(conv.forward(Tensor::zeros(Shape{1, 2, 2, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("Conv2d(2, 4, kernel_size=3): padded input is 2x2, expected at least the dilated "
                                 "kernel's 3x3"));
  CHECK_THROWS_MATCHES(conv.backward(Tensor::zeros(Shape{1, 4, 3, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("Conv2d(2, 4, kernel_size=3): backward called without a forward, expected forward "
                                 "first"));
  CHECK_THROWS_MATCHES(nn::MaxPool2d(2, nn::MaxPool2dOptions{.padding = 2}), InvalidArgument,
                       MessageIs("MaxPool2d: padding 2, expected between 0 and half the kernel size 2"));
  CHECK_THROWS_MATCHES(nn::AdaptiveAvgPool2d(0), InvalidArgument,
                       MessageIs("AdaptiveAvgPool2d: output_size 0, expected >= 1"));
}

TEST_CASE("Residual adds its body and shortcut, and their gradients", "[nn][residual]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  auto body = std::make_shared<nn::Sequential>();
  body->add(std::make_shared<nn::Conv2d>(2, 2, 3, [] {
    nn::Conv2dOptions o = conv64(3);
    o.padding = 1;
    return o;
  }()));
  body->add(std::make_shared<nn::ReLU>());
  nn::Residual identity(body);
  check_module_gradients(identity, input(Shape{2, 2, 4, 4}, 3), 206);
  CHECK(identity.named_parameters().front().first == "body.0.weight");

  nn::Conv2dOptions o = conv64(4);
  o.stride = 2;
  auto strided = std::make_shared<nn::Conv2d>(2, 3, 3, [&] {
    nn::Conv2dOptions s = conv64(5);
    s.stride = 2;
    s.padding = 1;
    return s;
  }());
  nn::Residual projected(strided, std::make_shared<nn::Conv2d>(2, 3, 1, o));
  check_module_gradients(projected, input(Shape{2, 2, 5, 5}, 4), 207);
  CHECK(projected.named_parameters().back().first == "shortcut.bias");

  nn::Residual mismatched(std::make_shared<nn::Conv2d>(2, 3, 1, conv64(6)));
  CHECK_THROWS_MATCHES(mismatched.forward(input(Shape{1, 2, 3, 3}, 5)), InvalidArgument,
                       MessageIs("Residual: body gives shape (1, 3, 3, 3), expected (1, 2, 3, 3) (the input's, for "
                                 "the identity shortcut)"));
}

TEST_CASE("BasicBlock's gradients match finite differences with and without a downsample", "[nn][residual]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const std::int64_t stride = GENERATE(1, 2);
  const bool training = GENERATE(true, false);
  CAPTURE(stride, training);
  nn::BasicBlock block(2, stride == 1 ? 2 : 3, stride, 9, DType::Float64, test_device());
  block.train(training);
  // Running statistics away from their defaults, so that eval mode is not the identity.
  block.train(true);
  block.forward(input(Shape{4, 2, 5, 5}, 6));
  block.train(training);
  check_module_gradients(block, input(Shape{3, 2, 5, 5}, 7), 208, {1e-5, 1e-6});
}

TEST_CASE("resnet() has torchvision's module names and the expected output", "[nn][residual]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  nn::ResNetOptions options;
  options.widths = {4, 8};
  options.blocks_per_stage = 2;
  options.device = test_device();
  auto net = nn::resnet(options);
  std::vector<std::string> names;
  for (auto& [name, p] : net->named_parameters()) names.push_back(name);
  const std::vector<std::string> first{"conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
                                       "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.conv2.weight"};
  CHECK(std::vector<std::string>(names.begin(), names.begin() + 7) == first);
  CHECK(std::find(names.begin(), names.end(), "layer2.0.downsample.0.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "layer2.0.downsample.1.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "layer1.0.downsample.0.weight") == names.end());
  CHECK(names.back() == "fc.bias");
  CHECK(net->forward(Tensor::randn(Shape{3, 1, 12, 12}, kSeed, DType::Float32, test_device())).shape() ==
        Shape{3, 10});
  CHECK_THROWS_MATCHES(nn::resnet(nn::ResNetOptions{.widths = {}}), InvalidArgument,
                       MessageIs("resnet: widths is empty, expected at least one stage"));
}
