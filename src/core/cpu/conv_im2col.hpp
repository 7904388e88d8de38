#pragma once
// The im2col engine of the CPU convolutions (Note [Convolution on the CPU]
// in conv_im2col.cpp): float32 and float64, NCHW and NHWC (Note
// [Channels-last convolution on the CPU] in conv_im2col_nhwc.cpp), through
// the BLAS. The entry points take either layout (Conv2dShape::channels_last).

#include <cstdint>
#include <type_traits>

#include "backend/kernels.hpp"
#include "cpu/blas.hpp"

namespace syncbn::cpu::im2col {

/// C = op(A) * op(B) + beta * C for row-major T = float or double operands,
/// through the BLAS (cpu/blas.hpp): the products of both layouts' stages.
template <class T>
void gemm(const char* op, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, const T* a,
          std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  constexpr DType dtype = std::is_same_v<T, float> ? DType::Float32 : DType::Float64;
  blas_gemm(op, dtype, trans_a, trans_b, m, n, k, 1.0, a, lda, b, ldb, static_cast<double>(beta), c, ldc);
}

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
