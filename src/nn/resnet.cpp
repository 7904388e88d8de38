// BasicBlock and the small ResNet built from it.

#include "syncbn/nn/resnet.hpp"

#include "layer_checks.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/conv.hpp"
#include "syncbn/nn/forward_transaction.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/pooling.hpp"

namespace syncbn::nn {
namespace {

// Child positions of BasicBlock.
enum : std::size_t { kConv1, kBn1, kRelu, kConv2, kBn2, kDownsample };

// Note [The ResNet's fused ReLU]
// Where a ReLU follows a batch norm (bn1 of the stem and of each block),
// the batch norm fuses it (BatchNormOptions::activation) and the child
// named relu is an Identity: the same outputs and gradients, bit for bit,
// without the ReLU's two passes over the activation and its output buffer
// (batch norm then nn::ReLU takes 1.4-2.0x batch norm alone, the fused
// relu 1.0x: docs/performance.md, "Batch norm forms"). The names, and so
// the checkpoints, are torchvision's; a network without batch norm, or
// built with fused_relu = false, keeps its ReLUs.

// BatchNorm2d, or an Identity in a network without normalisation (the child
// keeps its name, so the other checkpoint names do not change); with
// `fused_relu`, the batch norm applies the ReLU after it.
std::shared_ptr<Module> batch_norm(bool enabled, std::int64_t channels, DType dtype, Device device,
                                   core::ChannelLayout layout, bool fused_relu = false) {
  if (!enabled) return std::make_shared<Identity>();
  BatchNormOptions options;
  options.dtype = dtype;
  options.device = device;
  options.layout = layout;
  if (fused_relu) options.activation = Activation::relu();
  return std::make_shared<BatchNorm2d>(channels, options);
}

// The ReLU after a batch norm: an Identity where the batch norm fused it.
std::shared_ptr<Module> relu_after_batch_norm(bool fused) {
  if (fused) return std::make_shared<Identity>();
  return std::make_shared<ReLU>();
}

std::shared_ptr<Module> conv(std::int64_t in, std::int64_t out, Size2 kernel, std::int64_t stride, std::int64_t padding,
                             std::uint64_t seed, DType dtype, Device device, core::ChannelLayout layout) {
  Conv2dOptions options;
  options.layout = layout;
  options.stride = stride;
  options.padding = padding;
  options.bias = false;
  options.seed = seed;
  options.dtype = dtype;
  options.device = device;
  return std::make_shared<Conv2d>(in, out, kernel, options);
}

}  // namespace

BasicBlock::BasicBlock(std::int64_t in_channels, std::int64_t out_channels, std::int64_t stride, std::uint64_t seed,
                       DType dtype, Device device, bool batch_norm_enabled, core::ChannelLayout layout,
                       bool fused_relu)
    : in_(in_channels), out_(out_channels), stride_(stride), has_downsample_(stride != 1 || in_channels != out_channels),
      layout_(layout) {
  SYNCBN_CHECK(in_channels >= 1 && out_channels >= 1 && stride >= 1, "BasicBlock: in_channels ", in_channels,
               ", out_channels ", out_channels, " and stride ", stride, ", expected all >= 1");
  register_module("conv1", conv(in_channels, out_channels, 3, stride, 1, derive_seed(seed, 1), dtype, device, layout));
  const bool fuse = batch_norm_enabled && fused_relu;  // Note [The ResNet's fused ReLU]
  register_module("bn1", batch_norm(batch_norm_enabled, out_channels, dtype, device, layout, fuse));
  register_module("relu", relu_after_batch_norm(fuse));
  register_module("conv2", conv(out_channels, out_channels, 3, 1, 1, derive_seed(seed, 2), dtype, device, layout));
  register_module("bn2", batch_norm(batch_norm_enabled, out_channels, dtype, device, layout));
  if (has_downsample_) {
    auto downsample = std::make_shared<Sequential>();
    downsample->add(conv(in_channels, out_channels, 1, stride, 0, derive_seed(seed, 3), dtype, device, layout));
    downsample->add(batch_norm(batch_norm_enabled, out_channels, dtype, device, layout));
    register_module("downsample", downsample);
  }
}

std::string BasicBlock::describe() const {
  return "BasicBlock(" + std::to_string(in_) + ", " + std::to_string(out_) + ", stride=" + std::to_string(stride_) +
         (layout_ == core::ChannelLayout::Last ? ", channels_last" : "") + ")";
}

Tensor BasicBlock::forward(const Tensor& input) {
  check_replica_thread();
  SYNCBN_CHECK(input.defined(), describe(), ": input is undefined, expected a tensor");
  output_ = Tensor();
  ForwardTransaction transaction;  // Note [All-or-nothing forward]
  Tensor h = child(kConv1).forward(input);
  h = child(kBn1).forward(h);
  h = child(kRelu).forward(h);
  h = child(kConv2).forward(h);
  h = child(kBn2).forward(h);
  const Tensor shortcut = has_downsample_ ? child(kDownsample).forward(input) : input;
  SYNCBN_CHECK(h.shape() == shortcut.shape(), describe(), ": the residual branch gives shape ", h.shape(),
               ", expected the shortcut's ", shortcut.shape());
  output_ = relu(add(h, shortcut));
  return output_;
}

Tensor BasicBlock::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(output_.defined(), grad_output, output_.shape(), describe());
  const Tensor g = relu_backward(grad_output, output_);
  Tensor h = child(kBn2).backward(g);
  h = child(kConv2).backward(h);
  h = child(kRelu).backward(h);
  h = child(kBn1).backward(h);
  h = child(kConv1).backward(h);
  return add(h, has_downsample_ ? child(kDownsample).backward(g) : g);
}

std::shared_ptr<Sequential> resnet(const ResNetOptions& options) {
  SYNCBN_CHECK(!options.widths.empty(), "resnet: widths is empty, expected at least one stage");
  SYNCBN_CHECK(options.blocks_per_stage >= 1, "resnet: blocks_per_stage ", options.blocks_per_stage,
               ", expected >= 1");
  SYNCBN_CHECK(options.in_channels >= 1 && options.num_classes >= 1, "resnet: in_channels ", options.in_channels,
               " and num_classes ", options.num_classes, ", expected both >= 1");
  detail::check_layout(options.layout, "resnet");
  const core::ChannelLayout layout = options.layout;
  auto net = std::make_shared<Sequential>();
  std::uint64_t stream = 0;
  const auto next_seed = [&] { return derive_seed(options.seed, ++stream); };
  std::int64_t channels = options.widths.front();
  net->add("conv1",
           conv(options.in_channels, channels, 3, 1, 1, next_seed(), options.dtype, options.device, layout));
  const bool fuse = options.batch_norm && options.fused_relu;  // Note [The ResNet's fused ReLU]
  net->add("bn1", batch_norm(options.batch_norm, channels, options.dtype, options.device, layout, fuse));
  net->add("relu", relu_after_batch_norm(fuse));
  for (std::size_t stage = 0; stage < options.widths.size(); ++stage) {
    auto layer = std::make_shared<Sequential>();
    for (std::int64_t b = 0; b < options.blocks_per_stage; ++b) {
      const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
      layer->add(std::make_shared<BasicBlock>(channels, options.widths[stage], stride, next_seed(), options.dtype,
                                              options.device, options.batch_norm, layout, options.fused_relu));
      channels = options.widths[stage];
    }
    net->add("layer" + std::to_string(stage + 1), layer);
  }
  // (N, 1, 1, C) and (N, C, 1, 1) flatten to the same (N, C).
  net->add("avgpool", std::make_shared<AdaptiveAvgPool2d>(1, layout));
  net->add("flatten", std::make_shared<Flatten>());
  LinearOptions fc;
  fc.seed = next_seed();
  fc.dtype = options.dtype;
  fc.device = options.device;
  net->add("fc", std::make_shared<Linear>(channels, options.num_classes, fc));
  return net;
}

}  // namespace syncbn::nn
