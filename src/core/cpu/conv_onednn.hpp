#pragma once
// The oneDNN engine of the CPU convolutions (float32, NCHW): Note
// [Convolutions on oneDNN] in conv_onednn.cpp. Built where libdnnl-dev is
// found (SYNCBN_DNNL); conv_engines.cpp chooses between it and im2col.

#include <cstddef>
#include <cstdint>

#include "backend/kernels.hpp"

namespace syncbn::cpu::onednn {

/// y = conv(x, w) + bias (bias null: none).
void conv_forward(const core::detail::Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);
/// dx = the input gradient (written).
void conv_backward_input(const core::detail::Conv2dShape& s, const float* dy, const float* w, float* dx);
/// dw += the weight gradient.
void conv_backward_weight(const core::detail::Conv2dShape& s, const float* dy, const float* x, float* dw);

/// cpu::FrozenConvWeights begins and ends (Note [Frozen weights] in
/// conv_onednn.cpp); kept_weights: the copies the calling thread keeps.
void freeze_weights();
void thaw_weights() noexcept;
std::size_t kept_weights() noexcept;

/// The OpenMP threads the calling thread's primitives run on.
int threads() noexcept;
/// Sets them for the calling thread.
void set_threads(int threads) noexcept;

}  // namespace syncbn::cpu::onednn
