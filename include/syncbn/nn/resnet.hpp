#pragma once
// A small ResNet of basic blocks, with torchvision's module names, so that
// its checkpoints load into the same network written in PyTorch.

#include <cstdint>
#include <memory>
#include <vector>

#include "syncbn/core/channel_layout.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/nn/sequential.hpp"

namespace syncbn::nn {

/// torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut),
/// 3x3 convolutions without bias, the shortcut the identity or
/// `downsample` = Sequential(1x1 convolution with the block's stride, BatchNorm2d)
/// when the stride or the channel count changes. Children: conv1, bn1,
/// relu, conv2, bn2 and, when needed, downsample. With `fused_relu` (the
/// default) bn1 applies the ReLU after it itself
/// (BatchNormOptions::activation) and relu is an Identity: the same values,
/// bit for bit, one pass fewer. The batch norms may be
/// converted to SyncBatchNorm2d (convert_sync_batchnorm). Without
/// `batch_norm`, each batch norm is an Identity (same child names; no
/// parameters or buffers there). With layout Last, the block's input and
/// output are channels-last (N, H, W, C) and every child reads that layout.
class BasicBlock : public Cloneable<BasicBlock> {
 public:
  /// Throws InvalidArgument for channels or stride < 1.
  BasicBlock(std::int64_t in_channels, std::int64_t out_channels, std::int64_t stride = 1, std::uint64_t seed = 0,
             DType dtype = DType::Float32, Device device = Device(), bool batch_norm = true,
             core::ChannelLayout layout = core::ChannelLayout::First, bool fused_relu = true);
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { output_ = Tensor(); }

 private:
  std::int64_t in_, out_, stride_;
  bool has_downsample_;
  core::ChannelLayout layout_;
  Tensor output_;  // after the final ReLU, for its backward
};

/// Options of resnet().
struct ResNetOptions {
  std::int64_t in_channels = 1;
  std::int64_t num_classes = 10;
  /// Channels of each stage; every stage after the first halves H and W.
  std::vector<std::int64_t> widths{16, 32, 64};
  std::int64_t blocks_per_stage = 2;
  /// BatchNorm2d after every convolution; when false, an Identity in its
  /// place (a network without normalisation, for comparison).
  bool batch_norm = true;
  /// The activations' layout from the stem to the pooling: First, NCHW
  /// input (N, in_channels, H, W), or Last, channels-last input (N, H, W,
  /// in_channels), with every convolution, batch norm and the pooling
  /// reading and writing NHWC and no conversion inside the step. The
  /// parameters and the checkpoint are the same either way.
  core::ChannelLayout layout = core::ChannelLayout::First;
  /// Each ReLU that follows a batch norm (the stem's and each block's
  /// first) applied by the batch norm itself, its relu child an Identity:
  /// the same values, bit for bit, without the ReLU's passes over the
  /// activation. false keeps separate ReLU modules (torchvision's form).
  bool fused_relu = true;
  std::uint64_t seed = 0;
  DType dtype = DType::Float32;
  Device device = Device();
};

/// A ResNet for small images (CIFAR-style stem: one 3x3 convolution, no
/// max pooling): children conv1, bn1, relu, layer1 ... layerK (Sequential of
/// BasicBlock), avgpool (AdaptiveAvgPool2d(1)), flatten, fc (Linear). bn1
/// fuses the ReLU with `fused_relu`, as in the blocks.
/// With batch_norm = false every batch norm (bn1 and those of the blocks) is
/// an Identity and each relu a ReLU; the weights are initialised the same
/// either way.
/// Input (N, in_channels, H, W), or (N, H, W, in_channels) with layout
/// Last (core::to_channels_last converts a batch); output (N, num_classes)
/// logits.
std::shared_ptr<Sequential> resnet(const ResNetOptions& options = {});

}  // namespace syncbn::nn
