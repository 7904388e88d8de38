// Pooling stages: one validation gate, then the backend table of the
// tensors' device kind (Note [Backend tables]). Sizes and checks follow
// PyTorch's pooling_output_shape and pool2d_shape_check.

#include "syncbn/core/pool.hpp"

#include "backend/kernels.hpp"
#include "operand_checks.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core {
namespace {

void check_operand(const Tensor& t, const char* op, const char* name, ChannelLayout layout) {
  detail::check_float_operand(t, op, name, 4, detail::image_dims(layout));
}

void check_grad(const Tensor& grad_output, const Shape& expected, ChannelLayout layout, const char* op) {
  check_operand(grad_output, op, "grad_output", layout);
  SYNCBN_CHECK(grad_output.shape() == expected, op, ": grad_output has shape ", grad_output.shape(), ", expected ",
               expected, " (the output's)");
}

// n, c, h and w of a 4-D shape in `layout`, into s.
void read_dims(detail::Pool2dShape& s, const Shape& x, ChannelLayout layout, const char* op) {
  const bool last = layout == ChannelLayout::Last;
  SYNCBN_CHECK(x.rank() == 4, op, ": input has shape ", x, ", expected a 4-D ", detail::image_dims(layout), " shape");
  s.channels_last = last;
  s.n = x[0];
  s.c = x[last ? 3 : 1];
  s.h = x[last ? 1 : 2];
  s.w = x[last ? 2 : 3];
}

detail::Pool2dShape resolve(const Shape& x, const Pool2dGeometry& g, bool is_max, const char* op) {
  detail::check_layout(g.layout, op);
  for (int d = 0; d < 2; ++d) {
    SYNCBN_CHECK(g.kernel[d] >= 1, op, ": kernel_size ", g.kernel[d], ", expected >= 1");
    SYNCBN_CHECK(g.stride[d] >= 1, op, ": stride ", g.stride[d], ", expected >= 1");
    SYNCBN_CHECK(g.dilation[d] >= 1, op, ": dilation ", g.dilation[d], ", expected >= 1");
    SYNCBN_CHECK(g.padding[d] >= 0 && g.padding[d] <= g.kernel[d] / 2, op, ": padding ", g.padding[d],
                 ", expected between 0 and half the kernel size (", g.kernel[d] / 2, ")");
  }
  SYNCBN_CHECK(is_max || (g.dilation[0] == 1 && g.dilation[1] == 1), op, ": dilation ", g.dilation[0], "x",
               g.dilation[1], ", expected 1x1 (average pooling has no dilation)");
  detail::Pool2dShape s{};
  read_dims(s, x, g.layout, op);
  s.kh = g.kernel[0];
  s.kw = g.kernel[1];
  s.stride_h = g.stride[0];
  s.stride_w = g.stride[1];
  s.pad_h = g.padding[0];
  s.pad_w = g.padding[1];
  s.dilation_h = g.dilation[0];
  s.dilation_w = g.dilation[1];
  s.count_include_pad = g.count_include_pad;
  s.oh = pool_output_size(s.h, s.kh, s.stride_h, s.pad_h, s.dilation_h, g.ceil_mode);
  s.ow = pool_output_size(s.w, s.kw, s.stride_w, s.pad_w, s.dilation_w, g.ceil_mode);
  SYNCBN_CHECK(s.oh >= 1 && s.ow >= 1, op, ": input ", x, " gives an output of ", s.oh, "x", s.ow,
               ", expected at least 1x1 (the window is larger than the padded input)");
  return s;
}

Shape output_shape(const detail::Pool2dShape& s) {
  return s.channels_last ? Shape{s.n, s.oh, s.ow, s.c} : Shape{s.n, s.c, s.oh, s.ow};
}

}  // namespace

std::int64_t pool_output_size(std::int64_t in, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                              std::int64_t dilation, bool ceil_mode) {
  const std::int64_t numerator = in + 2 * padding - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // Division rounding towards minus infinity, as PyTorch's div_rtn.
  std::int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  // With ceil_mode, the last window must start inside the input or its left padding.
  if (ceil_mode && (out - 1) * stride >= in + padding) --out;
  return out;
}

MaxPool2dResult max_pool2d(const Tensor& x, const Pool2dGeometry& geometry, const char* op) {
  check_operand(x, op, "input", geometry.layout);
  const detail::Pool2dShape s = resolve(x.shape(), geometry, true, op);
  MaxPool2dResult r{Tensor::empty(output_shape(s), x.dtype(), x.device()),
                    Tensor::empty(output_shape(s), DType::Int64, x.device())};
  if (r.output.numel() == 0) return r;
  detail::pool_kernels(x.device().kind())
      .max_forward(x.device(), x.dtype(), s, x.raw_data(), r.output.raw_data(), r.indices.data<std::int64_t>());
  return r;
}

Tensor max_pool2d_backward(const Tensor& grad_output, const Tensor& indices, const Shape& x_shape, const char* op) {
  return max_pool2d_backward(grad_output, indices, x_shape, ChannelLayout::First, op);
}

Tensor max_pool2d_backward(const Tensor& grad_output, const Tensor& indices, const Shape& x_shape,
                           ChannelLayout layout, const char* op) {
  check_operand(grad_output, op, "grad_output", layout);
  SYNCBN_CHECK(indices.defined() && indices.dtype() == DType::Int64, op, ": indices have dtype ",
               indices.defined() ? dtype_name(indices.dtype()) : "undefined", ", expected int64 (max_pool2d's)");
  SYNCBN_CHECK(indices.shape() == grad_output.shape() && indices.device() == grad_output.device(), op,
               ": indices have shape ", indices.shape(), " on ", indices.device(), ", expected ", grad_output.shape(),
               " on ", grad_output.device(), " (as grad_output)");
  const int channel = layout == ChannelLayout::Last ? 3 : 1;
  SYNCBN_CHECK(x_shape.rank() == 4 && x_shape[0] == grad_output.size(0) &&
                   x_shape[channel] == grad_output.size(channel),
               op, ": input shape ", x_shape, " does not fit grad_output ", grad_output.shape(),
               ", expected the same N and C (", channel_layout_name(layout), ")");
  detail::Pool2dShape s{};
  read_dims(s, x_shape, layout, op);
  s.oh = grad_output.size(layout == ChannelLayout::Last ? 1 : 2);
  s.ow = grad_output.size(layout == ChannelLayout::Last ? 2 : 3);
  Tensor dx = Tensor::empty(x_shape, grad_output.dtype(), grad_output.device());
  if (dx.numel() == 0) return dx;
  detail::pool_kernels(dx.device().kind())
      .max_backward(dx.device(), dx.dtype(), s, grad_output.raw_data(), indices.data<std::int64_t>(), dx.raw_data());
  return dx;
}

Tensor avg_pool2d(const Tensor& x, const Pool2dGeometry& geometry, const char* op) {
  check_operand(x, op, "input", geometry.layout);
  const detail::Pool2dShape s = resolve(x.shape(), geometry, false, op);
  Tensor y = Tensor::empty(output_shape(s), x.dtype(), x.device());
  if (y.numel() == 0) return y;
  detail::pool_kernels(x.device().kind()).avg_forward(x.device(), x.dtype(), s, x.raw_data(), y.raw_data());
  return y;
}

Tensor avg_pool2d_backward(const Tensor& grad_output, const Shape& x_shape, const Pool2dGeometry& geometry,
                           const char* op) {
  const detail::Pool2dShape s = resolve(x_shape, geometry, false, op);
  check_grad(grad_output, output_shape(s), geometry.layout, op);
  Tensor dx = Tensor::empty(x_shape, grad_output.dtype(), grad_output.device());
  if (dx.numel() == 0) return dx;
  detail::pool_kernels(dx.device().kind()).avg_backward(dx.device(), dx.dtype(), s, grad_output.raw_data(), dx.raw_data());
  return dx;
}

namespace {

detail::Pool2dShape resolve_adaptive(const Shape& x, std::int64_t out_h, std::int64_t out_w, ChannelLayout layout,
                                     const char* op) {
  detail::check_layout(layout, op);
  detail::Pool2dShape s{};
  read_dims(s, x, layout, op);
  SYNCBN_CHECK(out_h >= 1 && out_w >= 1, op, ": output size ", out_h, "x", out_w, ", expected at least 1x1");
  SYNCBN_CHECK(s.h >= 1 && s.w >= 1, op, ": input has shape ", x, ", expected H and W >= 1");
  s.oh = out_h;
  s.ow = out_w;
  return s;
}

}  // namespace

Tensor adaptive_avg_pool2d(const Tensor& x, std::int64_t out_h, std::int64_t out_w, const char* op) {
  return adaptive_avg_pool2d(x, out_h, out_w, ChannelLayout::First, op);
}

Tensor adaptive_avg_pool2d(const Tensor& x, std::int64_t out_h, std::int64_t out_w, ChannelLayout layout,
                           const char* op) {
  check_operand(x, op, "input", layout);
  const detail::Pool2dShape s = resolve_adaptive(x.shape(), out_h, out_w, layout, op);
  Tensor y = Tensor::empty(output_shape(s), x.dtype(), x.device());
  if (y.numel() == 0) return y;
  detail::pool_kernels(x.device().kind()).adaptive_avg_forward(x.device(), x.dtype(), s, x.raw_data(), y.raw_data());
  return y;
}

Tensor adaptive_avg_pool2d_backward(const Tensor& grad_output, const Shape& x_shape, const char* op) {
  return adaptive_avg_pool2d_backward(grad_output, x_shape, ChannelLayout::First, op);
}

Tensor adaptive_avg_pool2d_backward(const Tensor& grad_output, const Shape& x_shape, ChannelLayout layout,
                                    const char* op) {
  check_operand(grad_output, op, "grad_output", layout);
  const bool last = layout == ChannelLayout::Last;
  const detail::Pool2dShape s =
      resolve_adaptive(x_shape, grad_output.size(last ? 1 : 2), grad_output.size(last ? 2 : 3), layout, op);
  check_grad(grad_output, output_shape(s), layout, op);
  Tensor dx = Tensor::empty(x_shape, grad_output.dtype(), grad_output.device());
  if (dx.numel() == 0) return dx;
  detail::pool_kernels(dx.device().kind())
      .adaptive_avg_backward(dx.device(), dx.dtype(), s, grad_output.raw_data(), dx.raw_data());
  return dx;
}

}  // namespace syncbn::core
