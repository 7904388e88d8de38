#pragma once
// The im2col engine of the CPU convolutions (Note [Convolution on the CPU]
// in conv_im2col.cpp): float32 and float64, NCHW and NHWC (Note
// [Channels-last convolution on the CPU] in conv_im2col_nhwc.cpp), through
// the BLAS. The entry points take either layout (Conv2dShape::channels_last).

#include <cstdint>

#include "backend/kernels.hpp"

namespace syncbn::cpu::im2col {

void conv_forward(DType dtype, const core::detail::Conv2dShape& s, const void* x, const void* w, const void* bias,
                  void* y);
void conv_backward_input(DType dtype, const core::detail::Conv2dShape& s, const void* dy, const void* w, void* dx);
void conv_backward_weight(DType dtype, const core::detail::Conv2dShape& s, const void* dy, const void* x, void* dw);
void conv_backward_bias(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy, void* db);

// The NHWC stages the entry points call.
void conv_forward_nhwc(DType dtype, const core::detail::Conv2dShape& s, const void* x, const void* w,
                       const void* bias, void* y);
void conv_backward_input_nhwc(DType dtype, const core::detail::Conv2dShape& s, const void* dy, const void* w,
                              void* dx);
void conv_backward_weight_nhwc(DType dtype, const core::detail::Conv2dShape& s, const void* dy, const void* x,
                               void* dw);

}  // namespace syncbn::cpu::im2col
