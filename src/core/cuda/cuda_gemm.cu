// CUDA backend: dense matrix products through cuBLAS (full float32 or
// float64 arithmetic: the default math mode, no TF32). Row-major C =
// op(A) op(B) is the column-major product C^T = op(B)^T op(A)^T, so the
// operands are passed swapped.

#include <cstdint>
#include <type_traits>

#include "backend/dispatch.hpp"
#include "cuda/cublas_library.hpp"
#include "cuda/cuda_handles.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"

namespace syncbn::cuda::detail {
namespace {

void cuda_gemm(Device device, DType dtype, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
               double alpha, const void* a, const void* b, double beta, void* c) {
  if (m == 0 || n == 0) return;
  DeviceGuard guard(device.index());
  cublasHandle_t handle = cublas_handle(device.index());
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int lda = static_cast<int>(trans_a ? m : k);
  const int ldb = static_cast<int>(trans_b ? k : n);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  core::detail::dispatch_floating(dtype, "gemm", [&](auto tag) {
    using T = decltype(tag);
    const T alpha_t = static_cast<T>(alpha), beta_t = static_cast<T>(beta);
    const auto& cublas = cublas_api();
    if constexpr (std::is_same_v<T, float>)
      SYNCBN_CUBLAS_CHECK(cublas.sgemm(handle, op_b, op_a, ni, mi, ki, &alpha_t, static_cast<const float*>(b), ldb,
                                       static_cast<const float*>(a), lda, &beta_t, static_cast<float*>(c), ni));
    else
      SYNCBN_CUBLAS_CHECK(cublas.dgemm(handle, op_b, op_a, ni, mi, ki, &alpha_t, static_cast<const double*>(b), ldb,
                                       static_cast<const double*>(a), lda, &beta_t, static_cast<double*>(c), ni));
  });
}

}  // namespace

const core::detail::BlasKernels kBlasKernels{cuda_gemm};

}  // namespace syncbn::cuda::detail
