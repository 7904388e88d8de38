// CUDA backend: dense matrix products with a 16 x 16 shared-memory tiled
// kernel (transposes folded into the tile loads). Specification:
// src/core/cpu/cpu_gemm.cpp. Every element of C sums its products in increasing k,
// so its value does not depend on m (batch splits keep rows identical).

#include <cstdint>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"

namespace syncbn::cuda::detail {
namespace {


constexpr int kTile = 16;

template <class T, bool TransA, bool TransB>
__global__ void gemm_kernel(long long m, long long n, long long k, T alpha, const T* a, const T* b, T beta, T* c,
                            bool read_c) {
  __shared__ T as[kTile][kTile + 1];
  __shared__ T bs[kTile][kTile + 1];
  const long long row = blockIdx.y * static_cast<long long>(kTile) + threadIdx.y;
  const long long col = blockIdx.x * static_cast<long long>(kTile) + threadIdx.x;
  T acc = 0;
  for (long long t = 0; t < k; t += kTile) {
    const long long ak = t + threadIdx.x;
    as[threadIdx.y][threadIdx.x] =
        (row < m && ak < k) ? (TransA ? a[ak * m + row] : a[row * k + ak]) : T(0);
    const long long bk = t + threadIdx.y;
    bs[threadIdx.y][threadIdx.x] =
        (bk < k && col < n) ? (TransB ? b[col * k + bk] : b[bk * n + col]) : T(0);
    __syncthreads();
    for (int p = 0; p < kTile; ++p) acc += as[threadIdx.y][p] * bs[p][threadIdx.x];
    __syncthreads();
  }
  if (row < m && col < n) {
    const long long at = row * n + col;
    c[at] = read_c ? alpha * acc + beta * c[at] : alpha * acc;
  }
}

template <class T, bool TransA, bool TransB>
void launch(cudaStream_t stream, long long m, long long n, long long k, double alpha, const void* a, const void* b,
            double beta, void* c) {
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile), static_cast<unsigned>((m + kTile - 1) / kTile));
  gemm_kernel<T, TransA, TransB><<<grid, block, 0, stream>>>(m, n, k, static_cast<T>(alpha), static_cast<const T*>(a),
                                                             static_cast<const T*>(b), static_cast<T>(beta),
                                                             static_cast<T*>(c), beta != 0.0);
  SYNCBN_CUDA_LAUNCH_CHECK();
}

void cuda_gemm(Device device, DType dtype, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
               double alpha, const void* a, const void* b, double beta, void* c) {
  if (m == 0 || n == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "gemm", [&](auto tag) {
    using T = decltype(tag);
    if (trans_a && trans_b) launch<T, true, true>(stream, m, n, k, alpha, a, b, beta, c);
    else if (trans_a) launch<T, true, false>(stream, m, n, k, alpha, a, b, beta, c);
    else if (trans_b) launch<T, false, true>(stream, m, n, k, alpha, a, b, beta, c);
    else launch<T, false, false>(stream, m, n, k, alpha, a, b, beta, c);
  });
}

}  // namespace

const core::detail::BlasKernels kBlasKernels{cuda_gemm};

}  // namespace syncbn::cuda::detail
