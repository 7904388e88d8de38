#pragma once
// Checks of CUDA (and NCCL) calls: every failure becomes a syncbn::CudaError
// (NcclError) naming the file, line, expression and the runtime's message.

#include <cuda_runtime.h>

#include <string>

#include "syncbn/error.hpp"

namespace syncbn::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                  cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
}

}  // namespace syncbn::cuda::detail

/// Throws syncbn::CudaError unless `expr` returns cudaSuccess.
#define SYNCBN_CUDA_CHECK(expr)                                                          \
  do {                                                                                   \
    const cudaError_t syncbn_status_ = (expr);                                           \
    if (syncbn_status_ != cudaSuccess)                                                   \
      ::syncbn::cuda::detail::throw_cuda_error(syncbn_status_, #expr, __FILE__, __LINE__); \
  } while (false)

/// Checks the launch of the kernel just queued (call right after <<<...>>>).
#define SYNCBN_CUDA_LAUNCH_CHECK() SYNCBN_CUDA_CHECK(cudaGetLastError())
