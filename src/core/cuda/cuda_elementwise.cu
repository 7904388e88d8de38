// CUDA backend: element-wise arithmetic. Specification: src/core/cpu/cpu_elementwise.cpp.

#include <cstdint>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {


template <class T>
__global__ void binary_kernel(core::detail::BinaryOp op, long long n, const T* a, const T* b, T* out) {
  SYNCBN_GRID_STRIDE(i, n) {
    const T x = a[i], y = b[i];
    out[i] = op == core::detail::BinaryOp::Add ? x + y : (op == core::detail::BinaryOp::Sub ? x - y : x * y);
  }
}

template <class T>
__global__ void axpby_kernel(long long n, T alpha, const T* x, T beta, T* y, bool read_y) {
  SYNCBN_GRID_STRIDE(i, n) { y[i] = read_y ? alpha * x[i] + beta * y[i] : alpha * x[i]; }
}

template <class T>
__global__ void scale_kernel(long long n, T alpha, T* x) {
  SYNCBN_GRID_STRIDE(i, n) { x[i] *= alpha; }
}

void cuda_binary(Device device, core::detail::BinaryOp op, DType dtype, std::int64_t n, const void* a, const void* b, void* out) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "binary", [&](auto tag) {
    using T = decltype(tag);
    binary_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(op, n, static_cast<const T*>(a), static_cast<const T*>(b),
                                                         static_cast<T*>(out));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

void cuda_axpby(Device device, DType dtype, std::int64_t n, double alpha, const void* x, double beta, void* y) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "axpby", [&](auto tag) {
    using T = decltype(tag);
    axpby_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(n, static_cast<T>(alpha), static_cast<const T*>(x),
                                                        static_cast<T>(beta), static_cast<T*>(y), beta != 0.0);
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

void cuda_scale(Device device, DType dtype, std::int64_t n, double alpha, void* x) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "scale", [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(n, static_cast<T>(alpha), static_cast<T*>(x));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace

const core::detail::ElementwiseKernels kElementwiseKernels{cuda_binary, cuda_axpby, cuda_scale};

}  // namespace syncbn::cuda::detail
