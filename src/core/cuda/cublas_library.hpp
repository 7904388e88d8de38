#pragma once
// cuBLAS, opened on first use.
//
// Note [cuBLAS on first use]
// libcublas pulls in libcublasLt (half a gigabyte), whose static
// initialisers cost every process that links them about 0.4 s of CPU and
// 210 MB resident at start-up (measured on a 2-core machine), whether or
// not it ever multiplies a matrix on a GPU. A CUDA build of syncbn serves
// CPU-only programs too, and short-lived ones (its own test suite starts a
// process per test case), so the library is not linked: the first CUDA GEMM
// opens it with dlopen and looks up the few entry points syncbn calls. The
// soname comes first, so LD_LIBRARY_PATH and the system's loader cache are
// honoured; the file the build found is the fallback.

#include <cublas_v2.h>

namespace syncbn::cuda::detail {

/// The cuBLAS entry points syncbn calls (the _v2 API that cublas_v2.h maps
/// the plain names to).
struct CublasApi {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSgemm_v2) sgemm;
  decltype(&cublasDgemm_v2) dgemm;
};

/// cuBLAS, opened by the first call (thread-safe; it stays open until the
/// process exits). Throws CudaError naming the library and the loader's
/// reason when it cannot be opened or lacks an entry point; a later call
/// tries again.
const CublasApi& cublas_api();

}  // namespace syncbn::cuda::detail
