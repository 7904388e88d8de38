#pragma once
// Two-dimensional pooling (PyTorch's max_pool2d, avg_pool2d and
// adaptive_avg_pool2d) on NCHW or channels-last NHWC tensors, forward and
// backward, float32 and float64.

#include <array>
#include <cstdint>

#include "syncbn/core/channel_layout.hpp"
#include "syncbn/core/tensor.hpp"

namespace syncbn::core {

/// Window geometry of a 2-D pooling, {height, width} pairs (PyTorch's meaning;
/// the layers default stride to the kernel size).
struct Pool2dGeometry {
  std::array<std::int64_t, 2> kernel{1, 1};
  std::array<std::int64_t, 2> stride{1, 1};
  std::array<std::int64_t, 2> padding{0, 0};
  /// Max pooling only.
  std::array<std::int64_t, 2> dilation{1, 1};
  /// Rounds the output size up: a last window may start in the padding's
  /// left part but never entirely past the input and its left padding.
  bool ceil_mode = false;
  /// Average pooling only: padding counts in the divisor.
  bool count_include_pad = true;
  /// The layout of the input, the output and their gradients: First, (N, C,
  /// H, W), or Last, (N, H, W, C). The shapes below are written NCHW.
  ChannelLayout layout = ChannelLayout::First;
};

/// The output size of one spatial dimension (PyTorch's pooling_output_shape).
std::int64_t pool_output_size(std::int64_t in, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                              std::int64_t dilation, bool ceil_mode);

/// Max pooling's output and, for the backward, the int64 position (h * W + w)
/// of each output's maximum in its input plane (the first one on ties; NaN
/// wins, as in PyTorch). A window that holds no input (its dilated taps all
/// in the padding) gives -inf at index -1, and passes no gradient.
struct MaxPool2dResult {
  Tensor output;
  Tensor indices;
};

/// x (N, C, H, W) -> (N, C, H_out, W_out). Errors start with `op`.
MaxPool2dResult max_pool2d(const Tensor& x, const Pool2dGeometry& geometry, const char* op = "max_pool2d");
/// dL/dx: each output's gradient added at its maximum's position.
Tensor max_pool2d_backward(const Tensor& grad_output, const Tensor& indices, const Shape& x_shape,
                           const char* op = "max_pool2d_backward");
/// The same for tensors in `layout` (the indices are positions in a plane
/// in either layout, as PyTorch's).
Tensor max_pool2d_backward(const Tensor& grad_output, const Tensor& indices, const Shape& x_shape,
                           ChannelLayout layout, const char* op = "max_pool2d_backward");

/// The mean of each window (padding as zeros; divisor per count_include_pad).
Tensor avg_pool2d(const Tensor& x, const Pool2dGeometry& geometry, const char* op = "avg_pool2d");
Tensor avg_pool2d_backward(const Tensor& grad_output, const Shape& x_shape, const Pool2dGeometry& geometry,
                           const char* op = "avg_pool2d_backward");

/// Mean over adaptive windows to (out_h, out_w): rows [floor(i * H / out_h),
/// ceil((i + 1) * H / out_h)), columns likewise.
Tensor adaptive_avg_pool2d(const Tensor& x, std::int64_t out_h, std::int64_t out_w,
                           const char* op = "adaptive_avg_pool2d");
Tensor adaptive_avg_pool2d_backward(const Tensor& grad_output, const Shape& x_shape,
                                    const char* op = "adaptive_avg_pool2d_backward");
/// The same for tensors in `layout`.
Tensor adaptive_avg_pool2d(const Tensor& x, std::int64_t out_h, std::int64_t out_w, ChannelLayout layout,
                           const char* op = "adaptive_avg_pool2d");
Tensor adaptive_avg_pool2d_backward(const Tensor& grad_output, const Shape& x_shape, ChannelLayout layout,
                                    const char* op = "adaptive_avg_pool2d_backward");

}  // namespace syncbn::core
