// CUDA backend: losses. One block per row computes the row's max and
// log-sum-exp in float64; the mean over rows is a fixed-order block sum.
// Specification: src/core/cpu/cpu_loss.cpp.

#include <cub/block/block_reduce.cuh>

#include <cstdint>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {


struct MaxOp {
  __device__ double operator()(double a, double b) const { return a > b ? a : b; }
};

// row_max[i] and row_lse[i] = log(sum(exp(x - max))) of every row.
template <class T>
__global__ void row_stats_kernel(long long c, const T* x, double* row_max, double* row_lse) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ double shared_max;
  const T* row = x + blockIdx.x * c;
  double m = -1.0 / 0.0;
  for (long long j = threadIdx.x; j < c; j += kBlock) m = fmax(m, static_cast<double>(row[j]));
  const double block_max = Reduce(temp).Reduce(m, MaxOp());
  if (threadIdx.x == 0) shared_max = block_max;
  __syncthreads();
  double sum = 0;
  for (long long j = threadIdx.x; j < c; j += kBlock) sum += exp(static_cast<double>(row[j]) - shared_max);
  const double total = Reduce(temp).Sum(sum);
  if (threadIdx.x == 0) {
    row_max[blockIdx.x] = shared_max;
    row_lse[blockIdx.x] = log(total);
  }
}

template <class T>
__global__ void nll_mean_kernel(long long n, long long c, const T* x, const long long* targets, const double* row_max,
                                const double* row_lse, T* loss) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  double acc = 0;
  for (long long i = threadIdx.x; i < n; i += kBlock)
    acc += row_max[i] + row_lse[i] - static_cast<double>(x[i * c + targets[i]]);
  const double total = Reduce(temp).Sum(acc);
  if (threadIdx.x == 0) loss[0] = static_cast<T>(n > 0 ? total / static_cast<double>(n) : 0.0);
}

template <class T>
__global__ void ce_backward_kernel(long long n, long long c, const T* x, const long long* targets,
                                   const double* row_max, const double* row_lse, double scale, T* grad) {
  SYNCBN_GRID_STRIDE(e, n * c) {
    const long long i = e / c, j = e % c;
    const double p = exp(static_cast<double>(x[e]) - row_max[i] - row_lse[i]);
    grad[e] = static_cast<T>((p - (j == targets[i] ? 1.0 : 0.0)) * scale);
  }
}

void cuda_cross_entropy_forward(Device device, DType dtype, std::int64_t n, std::int64_t c, const void* logits,
                                const std::int64_t* targets, void* loss) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  ScratchBuffer row_max(device.index(), sizeof(double) * static_cast<std::size_t>(n));
  ScratchBuffer row_lse(device.index(), sizeof(double) * static_cast<std::size_t>(n));
  core::detail::dispatch_floating(dtype, "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    if (n > 0) {
      row_stats_kernel<T><<<static_cast<unsigned>(n), kBlock, 0, stream>>>(c, static_cast<const T*>(logits),
                                                                           row_max.as<double>(), row_lse.as<double>());
      SYNCBN_CUDA_LAUNCH_CHECK();
    }
    nll_mean_kernel<T><<<1, kBlock, 0, stream>>>(n, c, static_cast<const T*>(logits),
                                                 reinterpret_cast<const long long*>(targets), row_max.as<double>(),
                                                 row_lse.as<double>(), static_cast<T*>(loss));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

void cuda_cross_entropy_backward(Device device, DType dtype, std::int64_t n, std::int64_t c, const void* logits,
                                 const std::int64_t* targets, double scale, void* grad) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  ScratchBuffer row_max(device.index(), sizeof(double) * static_cast<std::size_t>(n));
  ScratchBuffer row_lse(device.index(), sizeof(double) * static_cast<std::size_t>(n));
  core::detail::dispatch_floating(dtype, "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    row_stats_kernel<T><<<static_cast<unsigned>(n), kBlock, 0, stream>>>(c, static_cast<const T*>(logits),
                                                                         row_max.as<double>(), row_lse.as<double>());
    SYNCBN_CUDA_LAUNCH_CHECK();
    ce_backward_kernel<T><<<grid_for(n * c), kBlock, 0, stream>>>(
        n, c, static_cast<const T*>(logits), reinterpret_cast<const long long*>(targets), row_max.as<double>(),
        row_lse.as<double>(), scale, static_cast<T*>(grad));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace

const core::detail::LossKernels kLossKernels{cuda_cross_entropy_forward, cuda_cross_entropy_backward};

}  // namespace syncbn::cuda::detail
