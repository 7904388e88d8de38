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

// Note [Adam step] in src/core/ops.cpp: the arithmetic of cpu_adam, in
// float64, so the backends differ by float64 roundings only (nvcc may fuse a
// multiply and an add), far below a float32 ulp of the stored values.
template <class T>
__global__ void adam_kernel(long long n, core::detail::AdamCoefficients c, T* param, const T* grad, T* exp_avg,
                            T* exp_avg_sq, T* max_exp_avg_sq) {
  SYNCBN_GRID_STRIDE(i, n) {
    double p = static_cast<double>(param[i]);
    const double g = static_cast<double>(grad[i]) + c.grad_decay * p;
    p *= c.param_scale;
    const double m = c.beta1 * static_cast<double>(exp_avg[i]) + (1.0 - c.beta1) * g;
    const double v = c.beta2 * static_cast<double>(exp_avg_sq[i]) + (1.0 - c.beta2) * g * g;
    double second = v;
    if (max_exp_avg_sq != nullptr) {
      const double old_max = static_cast<double>(max_exp_avg_sq[i]);
      second = (v != v || v > old_max) ? v : old_max;  // torch.maximum: NaN wins
      max_exp_avg_sq[i] = static_cast<T>(second);
    }
    const double denom = sqrt(second) / c.bias_correction2_sqrt + c.eps;
    param[i] = static_cast<T>(p - c.step_size * m / denom);
    exp_avg[i] = static_cast<T>(m);
    exp_avg_sq[i] = static_cast<T>(v);
  }
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

void cuda_adam(Device device, DType dtype, std::int64_t n, const core::detail::AdamCoefficients& c, void* param,
               const void* grad, void* exp_avg, void* exp_avg_sq, void* max_exp_avg_sq) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "adam_update_", [&](auto tag) {
    using T = decltype(tag);
    adam_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(n, c, static_cast<T*>(param), static_cast<const T*>(grad),
                                                       static_cast<T*>(exp_avg), static_cast<T*>(exp_avg_sq),
                                                       static_cast<T*>(max_exp_avg_sq));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace

const core::detail::ElementwiseKernels kElementwiseKernels{cuda_binary, cuda_axpby, cuda_scale, cuda_adam};

}  // namespace syncbn::cuda::detail
