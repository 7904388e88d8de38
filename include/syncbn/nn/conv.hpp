#pragma once
// Conv2d: PyTorch's torch.nn.Conv2d (NCHW or channels-last NHWC, zero padding).

#include <cstdint>

#include "syncbn/core/conv.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/nn/size2.hpp"

namespace syncbn::nn {

/// Options of Conv2d (PyTorch's names and defaults).
struct Conv2dOptions {
  Size2 stride = 1;
  Size2 padding = 0;
  Size2 dilation = 1;
  std::int64_t groups = 1;
  bool bias = true;
  /// Seed of PyTorch's default initialisation: weight and bias uniform in
  /// [-1/sqrt(fan_in), 1/sqrt(fan_in)], fan_in = in_channels / groups * kH * kW.
  std::uint64_t seed = 0;
  DType dtype = DType::Float32;
  Device device = Device();
  /// The layout of the input and output (and their gradients): First,
  /// (N, C, H, W), or Last, channels-last (N, H, W, C). The weight keeps
  /// PyTorch's (C_out, C_in / groups, kH, kW) either way, so a checkpoint
  /// does not depend on the layout.
  core::ChannelLayout layout = core::ChannelLayout::First;
};

/// 2-D convolution: input (N, C_in, H, W) -> output (N, C_out, H_out, W_out)
/// ((N, H, W, C) for both with layout Last); parameters weight (C_out,
/// C_in / groups, kH, kW) and bias (C_out).
class Conv2d : public Cloneable<Conv2d> {
 public:
  /// Throws InvalidArgument for channels < 1, channels not divisible by
  /// groups, kernel < 1, stride < 1, padding < 0, dilation < 1 or a
  /// non-floating dtype.
  Conv2d(std::int64_t in_channels, std::int64_t out_channels, Size2 kernel_size, Conv2dOptions options = {});
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

  Parameter& weight() { return parameter(weight_); }
  /// Throws InvalidArgument when the layer has no bias.
  Parameter& bias();
  std::int64_t in_channels() const noexcept { return in_; }
  std::int64_t out_channels() const noexcept { return out_; }
  const core::Conv2dGeometry& geometry() const noexcept { return geometry_; }

 protected:
  void clear_cache() override { input_ = Tensor(); }

 private:
  std::int64_t in_, out_;
  Size2 kernel_;
  bool has_bias_;
  core::Conv2dGeometry geometry_;
  std::size_t weight_ = 0, bias_ = 0;
  Tensor input_;
  Shape output_shape_;
};

}  // namespace syncbn::nn
