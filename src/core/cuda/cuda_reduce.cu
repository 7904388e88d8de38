// CUDA backend: reductions accumulated in float64, in a fixed order so that
// results do not change from run to run. Specification: src/core/cpu/cpu_reduce.cpp.

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {


// ---- sum_all: block partials, then one block over the partials -----------

template <class T>
__global__ void sum_partials_kernel(long long n, const T* x, double* partial) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  double acc = 0;
  for (long long i = blockIdx.x * static_cast<long long>(kBlock) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * kBlock)
    acc += static_cast<double>(x[i]);
  const double total = Reduce(temp).Sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <class T>
__global__ void sum_finish_kernel(int parts, const double* partial, T* out) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  double acc = 0;
  for (int i = threadIdx.x; i < parts; i += kBlock) acc += partial[i];
  const double total = Reduce(temp).Sum(acc);
  if (threadIdx.x == 0) out[0] = static_cast<T>(total);
}

void cuda_sum_all(Device device, DType dtype, std::int64_t n, const void* x, void* out) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  const int parts = static_cast<int>(std::min<long long>(1024, std::max<long long>(1, (n + kBlock - 1) / kBlock)));
  ScratchBuffer partial(device.index(), sizeof(double) * static_cast<std::size_t>(parts));
  core::detail::dispatch_floating(dtype, "sum", [&](auto tag) {
    using T = decltype(tag);
    sum_partials_kernel<T><<<parts, kBlock, 0, stream>>>(n, static_cast<const T*>(x), partial.as<double>());
    SYNCBN_CUDA_LAUNCH_CHECK();
    sum_finish_kernel<T><<<1, kBlock, 0, stream>>>(parts, partial.as<double>(), static_cast<T*>(out));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

// ---- sum_rows: column sums of a rows x cols matrix ------------------------
// Block (32, 8) covers 32 columns (coalesced reads along a row) and a chunk
// of kRowsPerChunk rows; chunk partials are then summed in chunk order.

constexpr int kColsPerBlock = 32;
constexpr int kRowThreads = 8;
constexpr long long kRowsPerChunk = 256;

template <class T>
__global__ void column_partials_kernel(long long rows, long long cols, const T* x, double* partial) {
  __shared__ double acc[kRowThreads][kColsPerBlock];
  const long long col = blockIdx.x * static_cast<long long>(kColsPerBlock) + threadIdx.x;
  const long long row_begin = blockIdx.y * kRowsPerChunk;
  const long long row_end = min(rows, row_begin + kRowsPerChunk);
  double sum = 0;
  if (col < cols)
    for (long long r = row_begin + threadIdx.y; r < row_end; r += kRowThreads) sum += static_cast<double>(x[r * cols + col]);
  acc[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    double total = 0;
    for (int t = 0; t < kRowThreads; ++t) total += acc[t][threadIdx.x];
    partial[blockIdx.y * cols + col] = total;
  }
}

template <class T>
__global__ void column_finish_kernel(long long chunks, long long cols, const double* partial, T* out) {
  SYNCBN_GRID_STRIDE(col, cols) {
    double total = 0;
    for (long long c = 0; c < chunks; ++c) total += partial[c * cols + col];
    out[col] = static_cast<T>(total);
  }
}

void cuda_sum_rows(Device device, DType dtype, std::int64_t rows, std::int64_t cols, const void* x, void* out) {
  if (cols == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  const long long chunks = std::max<long long>(1, (rows + kRowsPerChunk - 1) / kRowsPerChunk);
  ScratchBuffer partial(device.index(), sizeof(double) * static_cast<std::size_t>(chunks * cols));
  core::detail::dispatch_floating(dtype, "sum_rows", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>((cols + kColsPerBlock - 1) / kColsPerBlock), static_cast<unsigned>(chunks));
    column_partials_kernel<T><<<grid, dim3(kColsPerBlock, kRowThreads), 0, stream>>>(rows, cols, static_cast<const T*>(x),
                                                                                   partial.as<double>());
    SYNCBN_CUDA_LAUNCH_CHECK();
    column_finish_kernel<T><<<grid_for(cols), kBlock, 0, stream>>>(chunks, cols, partial.as<double>(), static_cast<T*>(out));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

// ---- sum_many: element-wise sum of up to core::kMaxReplicas buffers, in order --

struct Sources {
  const void* ptr[core::kMaxReplicas];
};

template <class T>
__global__ void sum_many_kernel(long long n, Sources srcs, int count, T* out) {
  SYNCBN_GRID_STRIDE(i, n) {
    double acc = static_cast<double>(static_cast<const T*>(srcs.ptr[0])[i]);
    for (int k = 1; k < count; ++k) acc += static_cast<double>(static_cast<const T*>(srcs.ptr[k])[i]);
    out[i] = static_cast<T>(acc);
  }
}

void cuda_sum_many(Device device, DType dtype, std::int64_t n, const void* const* srcs, int count, void* out) {
  if (n == 0) return;
  SYNCBN_CHECK(count >= 1 && count <= core::kMaxReplicas, "sum_many: ", count, " sources, expected 1 to ",
               core::kMaxReplicas);
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  Sources s{};
  for (int k = 0; k < count; ++k) s.ptr[k] = srcs[k];
  core::detail::dispatch_floating(dtype, "sum_many", [&](auto tag) {
    using T = decltype(tag);
    sum_many_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(n, s, count, static_cast<T*>(out));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace

const core::detail::ReduceKernels kReduceKernels{cuda_sum_all, cuda_sum_rows, cuda_sum_many};

}  // namespace syncbn::cuda::detail
