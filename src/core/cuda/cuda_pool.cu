// CUDA backend: 2-D pooling, one thread per output element, NCHW or NHWC. Specification:
// src/core/cpu/cpu_pool.cpp (same windows, divisors and tie rule). The
// backward kernels scatter each output's gradient with atomic adds into a
// zeroed dx, as windows may overlap; so where they overlap, the order of the
// float additions, and the last bits of dx, may differ from run to run.

#include <math_constants.h>

#include <cstdint>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {

using core::detail::Pool2dShape;

struct Window {
  long long h0, h1, w0, w1;
  double divisor;
};

__device__ Window avg_window(const Pool2dShape& s, long long oy, long long ox) {
  long long h0 = oy * s.stride_h - s.pad_h, w0 = ox * s.stride_w - s.pad_w;
  long long h1 = min(h0 + static_cast<long long>(s.kh), static_cast<long long>(s.h + s.pad_h));
  long long w1 = min(w0 + static_cast<long long>(s.kw), static_cast<long long>(s.w + s.pad_w));
  const long long padded = (h1 - h0) * (w1 - w0);
  h0 = max(h0, 0LL);
  w0 = max(w0, 0LL);
  h1 = min(h1, static_cast<long long>(s.h));
  w1 = min(w1, static_cast<long long>(s.w));
  // (std::int64_t is long, not long long: every operand is cast so that one min overload matches.)
  return {h0, h1, w0, w1, static_cast<double>(s.count_include_pad ? padded : (h1 - h0) * (w1 - w0))};
}

__device__ Window adaptive_window(const Pool2dShape& s, long long oy, long long ox) {
  const long long h0 = oy * s.h / s.oh, h1 = ((oy + 1) * s.h + s.oh - 1) / s.oh;
  const long long w0 = ox * s.w / s.ow, w1 = ((ox + 1) * s.w + s.ow - 1) / s.ow;
  return {h0, h1, w0, w1, static_cast<double>((h1 - h0) * (w1 - w0))};
}

// Output element o's plane (n * c + channel) and pixel, in the shape's layout.
struct OutPos {
  long long p, oy, ox;
};

__device__ OutPos out_pos(const Pool2dShape& s, long long o) {
  if (s.channels_last) {
    const long long pix = (o / s.c) % (s.oh * s.ow), n = o / (s.c * s.oh * s.ow);
    return {n * s.c + o % s.c, pix / s.ow, pix % s.ow};
  }
  return {o / (s.ow * s.oh), (o / s.ow) % s.oh, o % s.ow};
}

// Where pixel q of plane p of the input lies.
__device__ long long in_at(const Pool2dShape& s, long long p, long long q) {
  return core::detail::plane_element(s, p, q, s.h * s.w);
}

template <class T>
__global__ void max_forward_kernel(Pool2dShape s, const T* x, T* y, long long* indices) {
  const long long total = s.n * s.c * s.oh * s.ow;
  SYNCBN_GRID_STRIDE(o, total) {
    const OutPos at_out = out_pos(s, o);
    const long long ox = at_out.ox, oy = at_out.oy, p = at_out.p;
    T best = static_cast<T>(-CUDART_INF);  // stays so for a window that holds no input
    long long at = -1;
    for (long long i = 0; i < s.kh; ++i) {
      const long long iy = oy * s.stride_h - s.pad_h + i * s.dilation_h;
      if (iy < 0 || iy >= s.h) continue;
      for (long long j = 0; j < s.kw; ++j) {
        const long long ix = ox * s.stride_w - s.pad_w + j * s.dilation_w;
        if (ix < 0 || ix >= s.w) continue;
        const T v = x[in_at(s, p, iy * s.w + ix)];
        if (at < 0 || v > best || isnan(v)) {
          best = v;
          at = iy * s.w + ix;
        }
      }
    }
    y[o] = best;
    indices[o] = at;
  }
}

template <class T>
__global__ void max_backward_kernel(Pool2dShape s, const T* dy, const long long* indices, T* dx) {
  const long long total = s.n * s.c * s.oh * s.ow;
  SYNCBN_GRID_STRIDE(o, total) {
    if (indices[o] >= 0) atomicAdd(dx + in_at(s, out_pos(s, o).p, indices[o]), dy[o]);
  }
}

template <class T, bool Adaptive>
__global__ void avg_forward_kernel(Pool2dShape s, const T* x, T* y) {
  const long long total = s.n * s.c * s.oh * s.ow;
  SYNCBN_GRID_STRIDE(o, total) {
    const OutPos at_out = out_pos(s, o);
    const Window win = Adaptive ? adaptive_window(s, at_out.oy, at_out.ox) : avg_window(s, at_out.oy, at_out.ox);
    double acc = 0.0;
    for (long long iy = win.h0; iy < win.h1; ++iy)
      for (long long ix = win.w0; ix < win.w1; ++ix) acc += static_cast<double>(x[in_at(s, at_out.p, iy * s.w + ix)]);
    y[o] = static_cast<T>(acc / win.divisor);
  }
}

template <class T, bool Adaptive>
__global__ void avg_backward_kernel(Pool2dShape s, const T* dy, T* dx) {
  const long long total = s.n * s.c * s.oh * s.ow;
  SYNCBN_GRID_STRIDE(o, total) {
    const OutPos at_out = out_pos(s, o);
    const Window win = Adaptive ? adaptive_window(s, at_out.oy, at_out.ox) : avg_window(s, at_out.oy, at_out.ox);
    const T g = static_cast<T>(static_cast<double>(dy[o]) / win.divisor);
    for (long long iy = win.h0; iy < win.h1; ++iy)
      for (long long ix = win.w0; ix < win.w1; ++ix) atomicAdd(dx + in_at(s, at_out.p, iy * s.w + ix), g);
  }
}

long long outputs(const Pool2dShape& s) { return s.n * s.c * s.oh * s.ow; }

// Zeroes dx (n * c * h * w elements of T) on the stream.
template <class T>
void zero_input(const Pool2dShape& s, void* dx, cudaStream_t stream) {
  SYNCBN_CUDA_CHECK(cudaMemsetAsync(dx, 0, static_cast<std::size_t>(s.n * s.c * s.h * s.w) * sizeof(T), stream));
}

void max_forward(Device device, DType dtype, const Pool2dShape& s, const void* x, void* y, std::int64_t* indices) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "max_pool2d", [&](auto tag) {
    using T = decltype(tag);
    max_forward_kernel<T><<<grid_for(outputs(s)), kBlock, 0, stream>>>(
        s, static_cast<const T*>(x), static_cast<T*>(y), reinterpret_cast<long long*>(indices));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

void max_backward(Device device, DType dtype, const Pool2dShape& s, const void* dy, const std::int64_t* indices,
                  void* dx) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "max_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    zero_input<T>(s, dx, stream);
    max_backward_kernel<T><<<grid_for(outputs(s)), kBlock, 0, stream>>>(
        s, static_cast<const T*>(dy), reinterpret_cast<const long long*>(indices), static_cast<T*>(dx));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

template <bool Adaptive>
void avg_forward(Device device, DType dtype, const Pool2dShape& s, const void* x, void* y) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, Adaptive ? "adaptive_avg_pool2d" : "avg_pool2d", [&](auto tag) {
    using T = decltype(tag);
    avg_forward_kernel<T, Adaptive>
        <<<grid_for(outputs(s)), kBlock, 0, stream>>>(s, static_cast<const T*>(x), static_cast<T*>(y));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

template <bool Adaptive>
void avg_backward(Device device, DType dtype, const Pool2dShape& s, const void* dy, void* dx) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, Adaptive ? "adaptive_avg_pool2d_backward" : "avg_pool2d_backward",
                                  [&](auto tag) {
                                    using T = decltype(tag);
                                    zero_input<T>(s, dx, stream);
                                    avg_backward_kernel<T, Adaptive><<<grid_for(outputs(s)), kBlock, 0, stream>>>(
                                        s, static_cast<const T*>(dy), static_cast<T*>(dx));
                                    SYNCBN_CUDA_LAUNCH_CHECK();
                                  });
}

}  // namespace

const core::detail::PoolKernels kPoolKernels{max_forward,         max_backward,        avg_forward<false>,
                                             avg_backward<false>, avg_forward<true>,   avg_backward<true>};

}  // namespace syncbn::cuda::detail
