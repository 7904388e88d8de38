#pragma once
// Pooling layers: PyTorch's MaxPool2d, AvgPool2d and AdaptiveAvgPool2d, on
// NCHW or, with layout Last, channels-last NHWC tensors.

#include <optional>

#include "syncbn/core/pool.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/nn/size2.hpp"

namespace syncbn::nn {

/// Options of MaxPool2d; stride defaults to the kernel size, as in PyTorch.
struct MaxPool2dOptions {
  std::optional<Size2> stride = std::nullopt;
  Size2 padding = 0;
  Size2 dilation = 1;
  bool ceil_mode = false;
  /// First: (N, C, H, W) input and output; Last: (N, H, W, C).
  core::ChannelLayout layout = core::ChannelLayout::First;
};

/// The maximum of each window; its gradient goes to the window's maximum
/// (the first one on ties).
class MaxPool2d : public Cloneable<MaxPool2d> {
 public:
  /// Throws InvalidArgument for kernel < 1, stride < 1, dilation < 1 or
  /// padding outside [0, kernel / 2].
  explicit MaxPool2d(Size2 kernel_size, MaxPool2dOptions options = {});
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { indices_ = Tensor(); }

 private:
  core::Pool2dGeometry geometry_;
  Tensor indices_;
  Shape input_shape_;
};

/// Options of AvgPool2d; stride defaults to the kernel size, as in PyTorch.
struct AvgPool2dOptions {
  std::optional<Size2> stride = std::nullopt;
  Size2 padding = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;
  /// First: (N, C, H, W) input and output; Last: (N, H, W, C).
  core::ChannelLayout layout = core::ChannelLayout::First;
};

/// The mean of each window.
class AvgPool2d : public Cloneable<AvgPool2d> {
 public:
  /// Throws InvalidArgument for kernel < 1, stride < 1 or padding outside
  /// [0, kernel / 2].
  explicit AvgPool2d(Size2 kernel_size, AvgPool2dOptions options = {});
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { has_input_ = false; }

 private:
  core::Pool2dGeometry geometry_;
  Shape input_shape_, output_shape_;
  bool has_input_ = false;
};

/// The mean over adaptive windows to a fixed output size (1 for global
/// average pooling), over (N, C, H, W) input, or (N, H, W, C) with layout
/// Last.
class AdaptiveAvgPool2d : public Cloneable<AdaptiveAvgPool2d> {
 public:
  /// Throws InvalidArgument for an output size < 1 or an unknown layout.
  explicit AdaptiveAvgPool2d(Size2 output_size, core::ChannelLayout layout = core::ChannelLayout::First);
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { has_input_ = false; }

 private:
  Size2 output_size_;
  core::ChannelLayout layout_;
  Shape input_shape_, output_shape_;
  bool has_input_ = false;
};

}  // namespace syncbn::nn
