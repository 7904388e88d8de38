// Convolution stages: one validation gate, then the backend table of the
// tensors' device kind (Note [Backend tables]).

#include "syncbn/core/conv.hpp"

#include <climits>

#include "backend/kernels.hpp"
#include "operand_checks.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core {
namespace {

void check_operand(const Tensor& t, const char* op, const char* name, int rank) {
  detail::check_float_operand(t, op, name, rank);
}

void check_like(const Tensor& t, const Tensor& like, const char* op, const char* name, const char* like_name) {
  SYNCBN_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), ", expected ", like.device(),
               " (as ", like_name, ")");
  SYNCBN_CHECK(t.dtype() == like.dtype(), op, ": ", name, " has dtype ", dtype_name(t.dtype()), ", expected ",
               dtype_name(like.dtype()), " (as ", like_name, ")");
}

void check_geometry(const Conv2dGeometry& g, const char* op) {
  for (int d = 0; d < 2; ++d) {
    SYNCBN_CHECK(g.stride[d] >= 1, op, ": stride ", g.stride[d], ", expected >= 1");
    SYNCBN_CHECK(g.padding[d] >= 0, op, ": padding ", g.padding[d], ", expected >= 0");
    SYNCBN_CHECK(g.dilation[d] >= 1, op, ": dilation ", g.dilation[d], ", expected >= 1");
  }
  SYNCBN_CHECK(g.groups >= 1, op, ": groups ", g.groups, ", expected >= 1");
  detail::check_layout(g.layout, op);
}

// Resolves and checks the sizes of a convolution of an input of shape x by weight w.
detail::Conv2dShape resolve(const Shape& x, const Shape& w, const Conv2dGeometry& g, const char* op) {
  check_geometry(g, op);
  SYNCBN_CHECK(x.rank() == 4, op, ": input has shape ", x, ", expected a 4-D ", detail::image_dims(g.layout), " shape");
  const bool last = g.layout == ChannelLayout::Last;
  const std::int64_t channels = x[last ? 3 : 1];
  SYNCBN_CHECK(w[0] % g.groups == 0, op, ": weight has ", w[0], " output channels, expected a multiple of groups (",
               g.groups, ")");
  SYNCBN_CHECK(channels == w[1] * g.groups, op, ": input has ", channels, " channels, expected ", w[1] * g.groups,
               " (weight ", w, " with groups ", g.groups, last ? ", input channels-last)" : ")");
  detail::Conv2dShape s{};
  s.channels_last = last;
  s.n = x[0];
  s.c_in = channels;
  s.h = x[last ? 1 : 2];
  s.w = x[last ? 2 : 3];
  s.c_out = w[0];
  s.kh = w[2];
  s.kw = w[3];
  s.stride_h = g.stride[0];
  s.stride_w = g.stride[1];
  s.pad_h = g.padding[0];
  s.pad_w = g.padding[1];
  s.dilation_h = g.dilation[0];
  s.dilation_w = g.dilation[1];
  s.groups = g.groups;
  SYNCBN_CHECK(s.kh >= 1 && s.kw >= 1, op, ": weight has shape ", w, ", expected a kernel of at least 1x1");
  SYNCBN_CHECK(s.c_in >= 1, op, ": input has shape ", x, ", expected at least one channel");
  const std::int64_t span_h = s.dilation_h * (s.kh - 1) + 1, span_w = s.dilation_w * (s.kw - 1) + 1;
  SYNCBN_CHECK(s.h + 2 * s.pad_h >= span_h && s.w + 2 * s.pad_w >= span_w, op, ": padded input is ",
               s.h + 2 * s.pad_h, "x", s.w + 2 * s.pad_w, ", expected at least the dilated kernel's ", span_h, "x",
               span_w);
  s.oh = conv_output_size(s.h, s.kh, s.stride_h, s.pad_h, s.dilation_h);
  s.ow = conv_output_size(s.w, s.kw, s.stride_w, s.pad_w, s.dilation_w);
  // The backends' libraries (CBLAS, cuDNN) take int sizes.
  const std::int64_t k = s.c_in / s.groups * s.kh * s.kw, l = s.oh * s.ow;
  SYNCBN_CHECK(k <= INT_MAX / (l > 0 ? l : 1) && s.c_out <= INT_MAX / k && s.h * s.w <= INT_MAX, op,
               ": one sample's lowered input is ", k, "x", l, ", expected fewer than 2^31 elements");
  return s;
}

Shape output_shape(const detail::Conv2dShape& s) {
  return s.channels_last ? Shape{s.n, s.oh, s.ow, s.c_out} : Shape{s.n, s.c_out, s.oh, s.ow};
}

}  // namespace

std::int64_t conv_output_size(std::int64_t in, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                              std::int64_t dilation) {
  return (in + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dGeometry& geometry,
              const char* op) {
  check_operand(x, op, "input", 4);
  check_operand(weight, op, "weight", 4);
  check_like(weight, x, op, "weight", "input");
  const detail::Conv2dShape s = resolve(x.shape(), weight.shape(), geometry, op);
  if (bias.defined()) {
    check_operand(bias, op, "bias", 1);
    check_like(bias, x, op, "bias", "input");
    SYNCBN_CHECK(bias.size(0) == s.c_out, op, ": bias has ", bias.size(0), " elements, expected ", s.c_out,
                 " (one per output channel)");
  }
  Tensor y = Tensor::empty(output_shape(s), x.dtype(), x.device());
  if (y.numel() == 0) return y;
  detail::conv_kernels(x.device().kind())
      .forward(x.device(), x.dtype(), s, x.raw_data(), weight.raw_data(), bias.defined() ? bias.raw_data() : nullptr,
               y.raw_data());
  return y;
}

Tensor conv2d_backward_input(const Tensor& grad_output, const Tensor& weight, const Shape& x_shape,
                             const Conv2dGeometry& geometry, const char* op) {
  check_operand(grad_output, op, "grad_output", 4);
  check_operand(weight, op, "weight", 4);
  check_like(weight, grad_output, op, "weight", "grad_output");
  const detail::Conv2dShape s = resolve(x_shape, weight.shape(), geometry, op);
  SYNCBN_CHECK(grad_output.shape() == output_shape(s), op, ": grad_output has shape ", grad_output.shape(),
               ", expected ", output_shape(s), " (the output's)");
  Tensor dx = Tensor::zeros(x_shape, grad_output.dtype(), grad_output.device());
  if (grad_output.numel() == 0) return dx;
  detail::conv_kernels(dx.device().kind())
      .backward_input(dx.device(), dx.dtype(), s, grad_output.raw_data(), weight.raw_data(), dx.raw_data());
  return dx;
}

void conv2d_backward_weight_(const Tensor& grad_weight, const Tensor& grad_output, const Tensor& x,
                             const Conv2dGeometry& geometry, const char* op) {
  check_operand(grad_weight, op, "grad_weight", 4);
  check_operand(grad_output, op, "grad_output", 4);
  check_operand(x, op, "input", 4);
  check_like(grad_output, grad_weight, op, "grad_output", "grad_weight");
  check_like(x, grad_weight, op, "input", "grad_weight");
  const detail::Conv2dShape s = resolve(x.shape(), grad_weight.shape(), geometry, op);
  SYNCBN_CHECK(grad_output.shape() == output_shape(s), op, ": grad_output has shape ", grad_output.shape(),
               ", expected ", output_shape(s), " (the output's)");
  if (grad_output.numel() == 0) return;
  detail::conv_kernels(x.device().kind())
      .backward_weight(x.device(), x.dtype(), s, grad_output.raw_data(), x.raw_data(), grad_weight.raw_data());
}

void conv2d_backward_bias_(const Tensor& grad_bias, const Tensor& grad_output, const char* op) {
  conv2d_backward_bias_(grad_bias, grad_output, ChannelLayout::First, op);
}

void conv2d_backward_bias_(const Tensor& grad_bias, const Tensor& grad_output, ChannelLayout layout, const char* op) {
  detail::check_layout(layout, op);
  check_operand(grad_bias, op, "grad_bias", 1);
  check_operand(grad_output, op, "grad_output", 4);
  check_like(grad_output, grad_bias, op, "grad_output", "grad_bias");
  const bool last = layout == ChannelLayout::Last;
  const Shape& dy = grad_output.shape();
  const std::int64_t channels = dy[last ? 3 : 1];
  SYNCBN_CHECK(channels == grad_bias.size(0), op, ": grad_output has ", channels, " channels (",
               channel_layout_name(layout), "), expected ", grad_bias.size(0), " (as grad_bias)");
  if (grad_output.numel() == 0) return;
  // NHWC is (rows, C) with one position per row: the NCHW kernel with l = 1.
  const std::int64_t rows = last ? dy[0] * dy[1] * dy[2] : dy[0], positions = last ? 1 : dy[2] * dy[3];
  detail::conv_kernels(grad_bias.device().kind())
      .backward_bias(grad_bias.device(), grad_bias.dtype(), rows, channels, positions, grad_output.raw_data(),
                     grad_bias.raw_data());
}

}  // namespace syncbn::core
