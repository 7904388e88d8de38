// MaxPool2d, AvgPool2d and AdaptiveAvgPool2d over core's pooling stages.

#include "syncbn/nn/pooling.hpp"

#include "layer_checks.hpp"

namespace syncbn::nn {
namespace {

core::Pool2dGeometry make_geometry(const char* layer, Size2 kernel, std::optional<Size2> stride, Size2 padding,
                                   Size2 dilation, bool ceil_mode, bool count_include_pad, core::ChannelLayout layout) {
  const Size2 s = stride.value_or(kernel);
  SYNCBN_CHECK(kernel.h >= 1 && kernel.w >= 1, layer, ": kernel_size ", kernel.str(), ", expected >= 1");
  SYNCBN_CHECK(s.h >= 1 && s.w >= 1, layer, ": stride ", s.str(), ", expected >= 1");
  SYNCBN_CHECK(dilation.h >= 1 && dilation.w >= 1, layer, ": dilation ", dilation.str(), ", expected >= 1");
  SYNCBN_CHECK(padding.h >= 0 && padding.w >= 0 && padding.h <= kernel.h / 2 && padding.w <= kernel.w / 2, layer,
               ": padding ", padding.str(), ", expected between 0 and half the kernel size ", kernel.str());
  detail::check_layout(layout, layer);
  core::Pool2dGeometry g;
  g.layout = layout;
  g.kernel = kernel.array();
  g.stride = s.array();
  g.padding = padding.array();
  g.dilation = dilation.array();
  g.ceil_mode = ceil_mode;
  g.count_include_pad = count_include_pad;
  return g;
}

Size2 size2(const std::array<std::int64_t, 2>& a) { return Size2(a[0], a[1]); }

void check_input(const Tensor& input, const std::string& layer, core::ChannelLayout layout) {
  SYNCBN_CHECK(input.defined(), layer, ": input is undefined, expected a tensor");
  SYNCBN_CHECK(input.rank() == 4, layer, ": expected 4-D input ", detail::image_dims(layout), ", got ", input.rank(),
               "-D input of shape ", input.shape());
}

std::string layout_suffix(core::ChannelLayout layout) {
  return layout == core::ChannelLayout::Last ? ", channels_last" : "";
}

}  // namespace

MaxPool2d::MaxPool2d(Size2 kernel_size, MaxPool2dOptions options)
    : geometry_(make_geometry("MaxPool2d", kernel_size, options.stride, options.padding, options.dilation,
                              options.ceil_mode, true, options.layout)) {}

std::string MaxPool2d::describe() const {
  std::string out = "MaxPool2d(kernel_size=" + size2(geometry_.kernel).str() +
                    ", stride=" + size2(geometry_.stride).str() + ", padding=" + size2(geometry_.padding).str();
  if (size2(geometry_.dilation) != Size2(1)) out += ", dilation=" + size2(geometry_.dilation).str();
  if (geometry_.ceil_mode) out += ", ceil_mode=true";
  return out + layout_suffix(geometry_.layout) + ")";
}

Tensor MaxPool2d::forward(const Tensor& input) {
  check_replica_thread();
  check_input(input, describe(), geometry_.layout);
  const std::string name = describe();
  core::MaxPool2dResult r = core::max_pool2d(input, geometry_, name.c_str());
  indices_ = r.indices;
  input_shape_ = input.shape();
  return r.output;
}

Tensor MaxPool2d::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(indices_.defined(), grad_output, indices_.shape(), describe());
  const std::string name = describe();
  return core::max_pool2d_backward(grad_output, indices_, input_shape_, geometry_.layout, name.c_str());
}

AvgPool2d::AvgPool2d(Size2 kernel_size, AvgPool2dOptions options)
    : geometry_(make_geometry("AvgPool2d", kernel_size, options.stride, options.padding, 1, options.ceil_mode,
                              options.count_include_pad, options.layout)) {}

std::string AvgPool2d::describe() const {
  std::string out = "AvgPool2d(kernel_size=" + size2(geometry_.kernel).str() +
                    ", stride=" + size2(geometry_.stride).str() + ", padding=" + size2(geometry_.padding).str();
  if (geometry_.ceil_mode) out += ", ceil_mode=true";
  if (!geometry_.count_include_pad) out += ", count_include_pad=false";
  return out + layout_suffix(geometry_.layout) + ")";
}

Tensor AvgPool2d::forward(const Tensor& input) {
  check_replica_thread();
  check_input(input, describe(), geometry_.layout);
  const std::string name = describe();
  Tensor out = core::avg_pool2d(input, geometry_, name.c_str());
  input_shape_ = input.shape();
  output_shape_ = out.shape();
  has_input_ = true;
  return out;
}

Tensor AvgPool2d::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(has_input_, grad_output, output_shape_, describe());
  const std::string name = describe();
  return core::avg_pool2d_backward(grad_output, input_shape_, geometry_, name.c_str());
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(Size2 output_size, core::ChannelLayout layout)
    : output_size_(output_size), layout_(layout) {
  SYNCBN_CHECK(output_size.h >= 1 && output_size.w >= 1, "AdaptiveAvgPool2d: output_size ", output_size.str(),
               ", expected >= 1");
  detail::check_layout(layout, "AdaptiveAvgPool2d");
}

std::string AdaptiveAvgPool2d::describe() const {
  return "AdaptiveAvgPool2d(output_size=" + output_size_.str() + layout_suffix(layout_) + ")";
}

Tensor AdaptiveAvgPool2d::forward(const Tensor& input) {
  check_replica_thread();
  check_input(input, describe(), layout_);
  const std::string name = describe();
  Tensor out = core::adaptive_avg_pool2d(input, output_size_.h, output_size_.w, layout_, name.c_str());
  input_shape_ = input.shape();
  output_shape_ = out.shape();
  has_input_ = true;
  return out;
}

Tensor AdaptiveAvgPool2d::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(has_input_, grad_output, output_shape_, describe());
  const std::string name = describe();
  return core::adaptive_avg_pool2d_backward(grad_output, input_shape_, layout_, name.c_str());
}

}  // namespace syncbn::nn
