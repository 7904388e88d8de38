// CUDA backend: activations. Specification: src/core/cpu/cpu_activation.cpp.

#include <cstdint>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {


template <class T>
__global__ void relu_kernel(long long n, const T* x, T* y) {
  SYNCBN_GRID_STRIDE(i, n) { y[i] = x[i] > T(0) ? x[i] : T(0); }
}

template <class T>
__global__ void relu_backward_kernel(long long n, const T* dy, const T* y, T* dx) {
  SYNCBN_GRID_STRIDE(i, n) { dx[i] = y[i] > T(0) ? dy[i] : T(0); }
}

void cuda_relu_forward(Device device, DType dtype, std::int64_t n, const void* x, void* y) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "relu", [&](auto tag) {
    using T = decltype(tag);
    relu_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(n, static_cast<const T*>(x), static_cast<T*>(y));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

void cuda_relu_backward(Device device, DType dtype, std::int64_t n, const void* dy, const void* y, void* dx) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "relu_backward", [&](auto tag) {
    using T = decltype(tag);
    relu_backward_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(n, static_cast<const T*>(dy), static_cast<const T*>(y),
                                                               static_cast<T*>(dx));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace

const core::detail::ActivationKernels kActivationKernels{cuda_relu_forward, cuda_relu_backward};

}  // namespace syncbn::cuda::detail
