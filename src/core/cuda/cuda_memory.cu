// CUDA backend: stream-ordered allocation, copies between host and GPUs,
// fills and dtype conversions. The CPU versions (src/core/cpu/cpu_memory.cpp) are
// the specification.

#include <algorithm>
#include <cstdint>

#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {


void* cuda_allocate(Device device, std::size_t nbytes) {
  DeviceGuard guard(device.index());
  void* ptr = nullptr;
  SYNCBN_CUDA_CHECK(cudaMallocAsync(&ptr, nbytes, stream_for(device.index())));
  return ptr;
}

void cuda_release(Device device, void* ptr, std::size_t /*nbytes*/) noexcept {
  // Stream-ordered: the block returns to the pool after the work queued on
  // the device's stream so far, without a host wait. Errors cannot be
  // reported from here (called by destructors).
  try {
    DeviceGuard guard(device.index());
    (void)cudaFreeAsync(ptr, stream_for(device.index()));
  } catch (...) {
  }
}

void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cuda() && src_device.is_cpu()) {
    const int d = dst_device.index();
    DeviceGuard guard(d);
    // From pageable memory the call returns once the source has been staged,
    // so the caller may reuse its host buffer at once.
    SYNCBN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream_for(d)));
    return;
  }
  if (dst_device.is_cpu() && src_device.is_cuda()) {
    const int s = src_device.index();
    DeviceGuard guard(s);
    cudaStream_t stream = stream_for(s);
    SYNCBN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream));
    SYNCBN_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host reads dst next
    return;
  }
  const int d = dst_device.index();
  const int s = src_device.index();
  if (d == s) {
    DeviceGuard guard(d);
    SYNCBN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream_for(d)));
    return;
  }
  // Between GPUs: the copy runs on the destination's stream after the
  // source's pending writes, and the source's later writes wait for the copy.
  order_after(d, s);
  {
    DeviceGuard guard(d);
    SYNCBN_CUDA_CHECK(cudaMemcpyPeerAsync(dst, d, src, s, nbytes, stream_for(d)));
  }
  order_after(s, d);
}

template <class T>
__global__ void fill_kernel(T* dst, long long n, double value) {
  const T v = from_double<T>(value);
  SYNCBN_GRID_STRIDE(i, n)
    dst[i] = v;
}

void cuda_fill(Device device, void* dst, DType dtype, std::int64_t n, double value) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  dispatch_any(dtype, [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(static_cast<T*>(dst), n, value);
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

template <class D, class S>
__global__ void convert_kernel(D* dst, const S* src, long long n) {
  SYNCBN_GRID_STRIDE(i, n)
    dst[i] = from_double<D>(to_double<S>(src[i]));
}

void cuda_convert(Device device, void* dst, DType dst_dtype, const void* src, DType src_dtype, std::int64_t n) {
  if (n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  if (dst_dtype == src_dtype) {
    SYNCBN_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(n) * dtype_size(dst_dtype),
                                      cudaMemcpyDeviceToDevice, stream));
    return;
  }
  dispatch_any(dst_dtype, [&](auto dst_tag) {
    using D = decltype(dst_tag);
    dispatch_any(src_dtype, [&](auto src_tag) {
      using S = decltype(src_tag);
      convert_kernel<D, S><<<grid_for(n), kBlock, 0, stream>>>(static_cast<D*>(dst), static_cast<const S*>(src), n);
      SYNCBN_CUDA_LAUNCH_CHECK();
    });
  });
}

// A 32 x 32 tile through shared memory (one column of padding against bank
// conflicts), so that both the reads and the writes are coalesced. Tiles
// are numbered along x (no 65535 limit on either matrix side), batches
// along z.
template <class E>
__global__ void transpose_kernel(long long rows, long long cols, long long col_tiles, const E* src, E* dst) {
  __shared__ E tile[32][33];
  const long long batch = blockIdx.z;
  const E* s = src + batch * rows * cols;
  E* d = dst + batch * rows * cols;
  const long long row0 = (static_cast<long long>(blockIdx.x) / col_tiles) * 32;
  const long long col0 = (static_cast<long long>(blockIdx.x) % col_tiles) * 32;
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const long long i = row0 + k, j = col0 + threadIdx.x;
    if (i < rows && j < cols) tile[k][threadIdx.x] = s[i * cols + j];
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const long long j = col0 + k, i = row0 + threadIdx.x;
    if (i < rows && j < cols) d[j * rows + i] = tile[threadIdx.x][k];
  }
}

void cuda_transpose(Device device, std::size_t element_size, std::int64_t batches, std::int64_t rows,
                    std::int64_t cols, const void* src, void* dst) {
  if (batches * rows * cols == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  const long long col_tiles = (cols + 31) / 32, tiles = (rows + 31) / 32 * col_tiles;
  auto launch = [&](auto tag) {
    using E = decltype(tag);
    const auto* s = static_cast<const E*>(src);
    auto* d = static_cast<E*>(dst);
    constexpr long long kMaxZ = 65535;  // grid z limit: batches in groups
    for (long long b0 = 0; b0 < batches; b0 += kMaxZ) {
      const long long count = std::min<long long>(kMaxZ, batches - b0);
      const dim3 grid(static_cast<unsigned>(tiles), 1, static_cast<unsigned>(count));
      transpose_kernel<E><<<grid, dim3(32, 8), 0, stream>>>(rows, cols, col_tiles, s + b0 * rows * cols,
                                                            d + b0 * rows * cols);
      SYNCBN_CUDA_LAUNCH_CHECK();
    }
  };
  switch (element_size) {
    case 2: launch(std::uint16_t{}); return;
    case 4: launch(std::uint32_t{}); return;
    case 8: launch(std::uint64_t{}); return;
    default: break;
  }
  SYNCBN_THROW(InvalidArgument, "transpose: element size ", element_size, " bytes, expected 2, 4 or 8");
}

void cuda_synchronize(Device device) {
  DeviceGuard guard(device.index());
  SYNCBN_CUDA_CHECK(cudaStreamSynchronize(stream_for(device.index())));
}

}  // namespace

const core::detail::MemoryKernels kMemoryKernels{cuda_allocate, cuda_release, cuda_copy, cuda_fill, cuda_convert,
                                                 cuda_transpose, cuda_synchronize};

}  // namespace syncbn::cuda::detail
