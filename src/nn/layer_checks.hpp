#pragma once
// Argument checks shared by the layers: every message starts with the
// layer's describe() and says what was expected and what was given.

#include <string>

#include "syncbn/core/channel_layout.hpp"
#include "syncbn/error.hpp"
#include "syncbn/core/tensor.hpp"

namespace syncbn::nn::detail {

/// Checks that `t` is defined, on `device`, of `dtype`.
inline void check_tensor(const Tensor& t, const std::string& layer, const char* what, Device device, DType dtype) {
  SYNCBN_CHECK(t.defined(), layer, ": ", what, " is undefined, expected a tensor");
  SYNCBN_CHECK(t.device() == device, layer, ": ", what, " is on ", t.device(), ", expected ", device,
               " (the device of its parameters)");
  SYNCBN_CHECK(t.dtype() == dtype, layer, ": ", what, " has dtype ", dtype_name(t.dtype()), ", expected ",
               dtype_name(dtype));
}

/// Checks that backward follows a forward and gets a gradient of the output's shape.
inline void check_backward(bool has_forward, const Tensor& grad, const Shape& output_shape, const std::string& layer) {
  SYNCBN_CHECK(has_forward, layer, ": backward called without a forward, expected forward first");
  SYNCBN_CHECK(grad.defined(), layer, ": grad_output is undefined, expected a tensor");
  SYNCBN_CHECK(grad.shape() == output_shape, layer, ": grad_output has shape ", grad.shape(), ", expected ",
               output_shape, " (the shape of the output)");
}

/// Checks that `layout` is ChannelLayout::First or Last (an option read from
/// an integer may be neither).
inline void check_layout(core::ChannelLayout layout, const std::string& layer) {
  SYNCBN_CHECK(layout == core::ChannelLayout::First || layout == core::ChannelLayout::Last, layer, ": layout ",
               static_cast<int>(layout), ", expected ChannelLayout::First or Last");
}

/// The dimensions of an image batch in `layout`, for messages.
inline const char* image_dims(core::ChannelLayout layout) {
  return layout == core::ChannelLayout::Last ? "(N, H, W, C)" : "(N, C, H, W)";
}

}  // namespace syncbn::nn::detail
