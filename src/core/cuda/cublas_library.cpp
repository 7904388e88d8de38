// cuBLAS opened on first use (Note [cuBLAS on first use]).

#include "cuda/cublas_library.hpp"

#include <dlfcn.h>

#include <atomic>
#include <mutex>
#include <string>

#include "syncbn/error.hpp"

#ifndef SYNCBN_CUBLAS_SONAME
#error "SYNCBN_CUBLAS_SONAME must name the cuBLAS shared library (src/core/CMakeLists.txt)"
#endif
#ifndef SYNCBN_CUBLAS_PATH
#error "SYNCBN_CUBLAS_PATH must give the cuBLAS library the build found (src/core/CMakeLists.txt)"
#endif

namespace syncbn::cuda::detail {
namespace {

std::mutex load_mutex;
CublasApi api;  // written once under load_mutex, then read only
std::atomic<bool> loaded{false};

template <class Function>
void resolve(void* library, const char* name, Function& out) {
  dlerror();
  void* symbol = dlsym(library, name);
  if (symbol == nullptr) {
    const char* reason = dlerror();
    SYNCBN_THROW(CudaError, "cuBLAS: ", SYNCBN_CUBLAS_SONAME, " has no entry point ", name,
                 ", expected the cuBLAS the build used (", reason ? reason : "no reason given", ")");
  }
  out = reinterpret_cast<Function>(symbol);
}

}  // namespace

const CublasApi& cublas_api() {
  if (loaded.load(std::memory_order_acquire)) return api;
  std::lock_guard lock(load_mutex);
  if (loaded.load(std::memory_order_relaxed)) return api;
  void* library = dlopen(SYNCBN_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
  std::string reasons;
  if (library == nullptr) {
    reasons = dlerror();
    library = dlopen(SYNCBN_CUBLAS_PATH, RTLD_NOW | RTLD_LOCAL);
  }
  if (library == nullptr) {
    reasons += "; ";
    reasons += dlerror();
    SYNCBN_THROW(CudaError, "cuBLAS: cannot open ", SYNCBN_CUBLAS_SONAME, " or ", SYNCBN_CUBLAS_PATH,
                 ", expected the CUDA toolkit's cuBLAS on the library path (", reasons, ")");
  }
  CublasApi found{};
  try {
    resolve(library, "cublasCreate_v2", found.create);
    resolve(library, "cublasDestroy_v2", found.destroy);
    resolve(library, "cublasSetStream_v2", found.set_stream);
    resolve(library, "cublasSgemm_v2", found.sgemm);
    resolve(library, "cublasDgemm_v2", found.dgemm);
  } catch (...) {
    dlclose(library);
    throw;
  }
  api = found;  // the library stays open: its handles live until threads end
  loaded.store(true, std::memory_order_release);
  return api;
}

}  // namespace syncbn::cuda::detail
