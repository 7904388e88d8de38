#pragma once
// Where a tensor's channels are, for every layer that reads images: batch
// norm, convolution, pooling. A header of its own, without tensors, so that
// the backends' kernel tables (compiled by nvcc too) can name it.

#include <cstdint>

namespace syncbn::core {

/// Where a tensor's channels are. First: (N, C, *) (NCHW, PyTorch's default);
/// Last: (N, *, C) (channels-last: NHWC, NDHWC), read by kernels written for
/// that layout. Tensors carry no strides: the layout is the caller's word
/// about the shape it passes.
enum class ChannelLayout : std::uint8_t { First, Last };

/// "channels-first" or "channels-last".
const char* channel_layout_name(ChannelLayout layout) noexcept;

}  // namespace syncbn::core
