#pragma once
// Per-thread handles of the CUDA libraries (cuBLAS, cuDNN), bound to the
// device's stream.
//
// Note [Library handles]
// A cuBLAS or cuDNN handle must not be used by two threads at once, and the
// replicas of a model run in one thread each, several of them possibly on
// one GPU. So every thread creates its own handle per device on first use
// (bound to stream_for(device), the one stream of the backend) and destroys
// it when the thread ends; no handle is shared and no lock is needed.

#include <cublas_v2.h>

#include <string>

#include "syncbn/error.hpp"

#if SYNCBN_WITH_CUDNN
#include <cudnn.h>
#endif

namespace syncbn::cuda::detail {

/// The calling thread's cuBLAS handle for `device`, on its stream.
cublasHandle_t cublas_handle(int device);

[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line);

#if SYNCBN_WITH_CUDNN
/// The calling thread's cuDNN handle for `device`, on its stream.
cudnnHandle_t cudnn_handle(int device);

[[noreturn]] void throw_cudnn_error(cudnnStatus_t status, const char* expr, const char* file, int line);
#endif

}  // namespace syncbn::cuda::detail

/// Throws syncbn::CudaError unless the cuBLAS call succeeds.
#define SYNCBN_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                       \
    const cublasStatus_t syncbn_status_ = (expr);                                            \
    if (syncbn_status_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::syncbn::cuda::detail::throw_cublas_error(syncbn_status_, #expr, __FILE__, __LINE__); \
  } while (false)

/// Throws syncbn::CudaError unless the cuDNN call succeeds.
#define SYNCBN_CUDNN_CHECK(expr)                                                            \
  do {                                                                                      \
    const cudnnStatus_t syncbn_status_ = (expr);                                            \
    if (syncbn_status_ != CUDNN_STATUS_SUCCESS)                                             \
      ::syncbn::cuda::detail::throw_cudnn_error(syncbn_status_, #expr, __FILE__, __LINE__); \
  } while (false)
