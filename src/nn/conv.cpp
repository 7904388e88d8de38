// Conv2d: the layer over core's convolution stages.

#include "syncbn/nn/conv.hpp"

#include <cmath>

#include "layer_checks.hpp"

namespace syncbn::nn {

Conv2d::Conv2d(std::int64_t in_channels, std::int64_t out_channels, Size2 kernel_size, Conv2dOptions options)
    : in_(in_channels), out_(out_channels), kernel_(kernel_size), has_bias_(options.bias) {
  SYNCBN_CHECK(in_channels >= 1 && out_channels >= 1, "Conv2d: in_channels ", in_channels, " and out_channels ",
               out_channels, ", expected both >= 1");
  SYNCBN_CHECK(options.groups >= 1, "Conv2d: groups ", options.groups, ", expected >= 1");
  SYNCBN_CHECK(in_channels % options.groups == 0 && out_channels % options.groups == 0, "Conv2d: in_channels ",
               in_channels, " and out_channels ", out_channels, ", expected both divisible by groups (",
               options.groups, ")");
  SYNCBN_CHECK(kernel_size.h >= 1 && kernel_size.w >= 1, "Conv2d: kernel_size ", kernel_size.str(),
               ", expected >= 1");
  SYNCBN_CHECK(options.stride.h >= 1 && options.stride.w >= 1, "Conv2d: stride ", options.stride.str(),
               ", expected >= 1");
  SYNCBN_CHECK(options.padding.h >= 0 && options.padding.w >= 0, "Conv2d: padding ", options.padding.str(),
               ", expected >= 0");
  SYNCBN_CHECK(options.dilation.h >= 1 && options.dilation.w >= 1, "Conv2d: dilation ", options.dilation.str(),
               ", expected >= 1");
  SYNCBN_CHECK(options.dtype == DType::Float32 || options.dtype == DType::Float64, "Conv2d: dtype ",
               dtype_name(options.dtype), ", expected float32 or float64");
  detail::check_layout(options.layout, "Conv2d");
  geometry_ = {options.stride.array(), options.padding.array(), options.dilation.array(), options.groups,
               options.layout};
  // PyTorch's default: kaiming_uniform(a = sqrt(5)) for the weight, which is
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
  const std::int64_t fan_in = in_channels / options.groups * kernel_size.h * kernel_size.w;
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  weight_ = register_parameter(
      "weight", Tensor::rand(Shape{out_channels, in_channels / options.groups, kernel_size.h, kernel_size.w},
                             options.seed, options.dtype, options.device, -bound, bound));
  if (has_bias_)
    bias_ = register_parameter("bias", Tensor::rand(Shape{out_channels}, derive_seed(options.seed, 1), options.dtype,
                                                    options.device, -bound, bound));
}

std::string Conv2d::describe() const {
  std::string out = "Conv2d(" + std::to_string(in_) + ", " + std::to_string(out_) + ", kernel_size=" + kernel_.str();
  const Size2 stride(geometry_.stride[0], geometry_.stride[1]);
  const Size2 padding(geometry_.padding[0], geometry_.padding[1]);
  const Size2 dilation(geometry_.dilation[0], geometry_.dilation[1]);
  if (stride != Size2(1)) out += ", stride=" + stride.str();
  if (padding != Size2(0)) out += ", padding=" + padding.str();
  if (dilation != Size2(1)) out += ", dilation=" + dilation.str();
  if (geometry_.groups != 1) out += ", groups=" + std::to_string(geometry_.groups);
  if (!has_bias_) out += ", bias=false";
  if (geometry_.layout == core::ChannelLayout::Last) out += ", channels_last";
  return out + ")";
}

Parameter& Conv2d::bias() {
  SYNCBN_CHECK(has_bias_, describe(), ": bias(): the layer has no bias, expected a layer made with bias = true");
  return parameter(bias_);
}

Tensor Conv2d::forward(const Tensor& input) {
  check_replica_thread();
  const Tensor& w = parameter(weight_).value;
  detail::check_tensor(input, describe(), "input", w.device(), w.dtype());
  const bool last = geometry_.layout == core::ChannelLayout::Last;
  SYNCBN_CHECK(input.rank() == 4, describe(), ": expected 4-D input ",
               last ? "(N, H, W, " + std::to_string(in_) + ")" : "(N, " + std::to_string(in_) + ", H, W)", ", got ",
               input.rank(), "-D input of shape ", input.shape());
  SYNCBN_CHECK(input.size(last ? 3 : 1) == in_, describe(), ": input has ", input.size(last ? 3 : 1),
               " channels, expected ", in_);
  const std::string name = describe();
  Tensor out = core::conv2d(input, w, has_bias_ ? parameter(bias_).value : Tensor(), geometry_, name.c_str());
  input_ = input;
  output_shape_ = out.shape();
  return out;
}

Tensor Conv2d::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(input_.defined(), grad_output, output_shape_, describe());
  Parameter& w = parameter(weight_);
  detail::check_tensor(grad_output, describe(), "grad_output", w.value.device(), w.value.dtype());
  const std::string name = describe();
  // The input gradient first: it is the only step that allocates, so a
  // failure leaves the parameter gradients as they were.
  Tensor dx = core::conv2d_backward_input(grad_output, w.value, input_.shape(), geometry_, name.c_str());
  core::conv2d_backward_weight_(w.grad, grad_output, input_, geometry_, name.c_str());
  if (has_bias_) core::conv2d_backward_bias_(parameter(bias_).grad, grad_output, geometry_.layout, name.c_str());
  return dx;
}

}  // namespace syncbn::nn
