#pragma once
// Two-dimensional convolution (PyTorch's conv2d) on NCHW or channels-last
// NHWC tensors: the forward and the three gradients, as stages the layers
// compose. The weight is (C_out, C_in / groups, kH, kW) in either layout,
// as PyTorch stores it, so checkpoints do not depend on the layout.
//
// The CPU backend has two engines (cpu::ConvEngine in syncbn/core/cpu.hpp):
// im2col, which lowers each group of each sample to one matrix product
// through the BLAS this build found, and oneDNN (float32, where the build
// found it), chosen per layer shape and stage; the CUDA backend calls
// cuDNN. A build without the library its backend needs throws Unsupported.
// float32 and float64.

#include <array>
#include <cstdint>

#include "syncbn/core/channel_layout.hpp"
#include "syncbn/core/tensor.hpp"

namespace syncbn::core {

/// Geometry of a 2-D convolution, {height, width} pairs (PyTorch's meaning).
struct Conv2dGeometry {
  std::array<std::int64_t, 2> stride{1, 1};
  std::array<std::int64_t, 2> padding{0, 0};
  std::array<std::int64_t, 2> dilation{1, 1};
  std::int64_t groups = 1;
  /// The layout of the input, the output and their gradients: First, (N, C,
  /// H, W), or Last, (N, H, W, C). The names below give the NCHW shapes.
  ChannelLayout layout = ChannelLayout::First;
};

/// The output size of one spatial dimension:
/// (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1.
std::int64_t conv_output_size(std::int64_t in, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                              std::int64_t dilation);

/// y = conv2d(x, weight) + bias: x (N, C_in, H, W), weight
/// (C_out, C_in / groups, kH, kW), bias (C_out) or undefined; y (N, C_out,
/// H_out, W_out). Same dtype and device. Errors start with `op`.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dGeometry& geometry,
              const char* op = "conv2d");

/// dL/dx of conv2d for dL/dy = grad_output, for an input of shape x_shape.
Tensor conv2d_backward_input(const Tensor& grad_output, const Tensor& weight, const Shape& x_shape,
                             const Conv2dGeometry& geometry, const char* op = "conv2d_backward_input");

/// grad_weight += dL/dweight of conv2d for input x and dL/dy = grad_output.
void conv2d_backward_weight_(const Tensor& grad_weight, const Tensor& grad_output, const Tensor& x,
                             const Conv2dGeometry& geometry, const char* op = "conv2d_backward_weight_");

/// grad_bias += the sum of grad_output (N, C, H, W) over N, H and W
/// (grad_output (N, H, W, C) for ChannelLayout::Last).
void conv2d_backward_bias_(const Tensor& grad_bias, const Tensor& grad_output,
                           const char* op = "conv2d_backward_bias_");
void conv2d_backward_bias_(const Tensor& grad_bias, const Tensor& grad_output, ChannelLayout layout,
                           const char* op = "conv2d_backward_bias_");

}  // namespace syncbn::core
