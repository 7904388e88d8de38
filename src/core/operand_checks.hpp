#pragma once
// The argument checks the convolution, pooling and batch-norm stages share
// (a defined float32 or float64 operand of a given rank, a known layout),
// named in the error by the entry point the user called (`op`).

#include "syncbn/core/channel_layout.hpp"
#include "syncbn/core/tensor.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core::detail {

/// The dimensions of an image batch in `layout`, for errors.
inline const char* image_dims(ChannelLayout layout) {
  return layout == ChannelLayout::Last ? "(N, H, W, C)" : "(N, C, H, W)";
}

/// `layout` is First or Last.
inline void check_layout(ChannelLayout layout, const char* op) {
  SYNCBN_CHECK(layout == ChannelLayout::First || layout == ChannelLayout::Last, op, ": layout ",
               static_cast<int>(layout), ", expected ChannelLayout::First or Last");
}

/// `t` is defined, float32 or float64, and of rank `rank`; `dims` names the
/// dimensions in the error, e.g. "(N, C, H, W)" (empty: none).
inline void check_float_operand(const Tensor& t, const char* op, const char* name, int rank, const char* dims = "") {
  SYNCBN_CHECK(t.defined(), op, ": ", name, " is undefined, expected a tensor");
  SYNCBN_CHECK(t.dtype() == DType::Float32 || t.dtype() == DType::Float64, op, ": ", name, " has dtype ",
               dtype_name(t.dtype()), ", expected float32 or float64");
  SYNCBN_CHECK(t.rank() == rank, op, ": ", name, " has shape ", t.shape(), ", expected a ", rank, "-D ", dims,
               *dims != '\0' ? " " : "", "tensor");
}

}  // namespace syncbn::core::detail
