// Per-thread cuBLAS and cuDNN handles (Note [Library handles]).

#include "cuda/cuda_handles.hpp"

#include <map>

#include "cuda/cuda_runtime.hpp"

namespace syncbn::cuda::detail {
namespace {

// One library's handles of this thread, by device; destroyed with the thread.
template <class Handle, auto Create, auto Destroy, auto SetStream>
class ThreadHandles {
 public:
  ThreadHandles() = default;
  ThreadHandles(const ThreadHandles&) = delete;
  ThreadHandles& operator=(const ThreadHandles&) = delete;
  ~ThreadHandles() {
    for (auto& [device, handle] : handles_) {
      try {
        DeviceGuard guard(device);
        (void)Destroy(handle);
      } catch (...) {  // the driver may be gone at process exit
      }
    }
  }

  template <class Check>
  Handle get(int device, Check check) {
    auto it = handles_.find(device);
    if (it != handles_.end()) return it->second;
    DeviceGuard guard(device);
    Handle handle{};
    check(Create(&handle));
    if (const auto status = SetStream(handle, stream_for(device)); status != decltype(status){}) {
      (void)Destroy(handle);
      check(status);
    }
    handles_.emplace(device, handle);
    return handle;
  }

 private:
  std::map<int, Handle> handles_;
};

}  // namespace

void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: cuBLAS status " +
                  std::to_string(static_cast<int>(status)));
}

cublasHandle_t cublas_handle(int device) {
  thread_local ThreadHandles<cublasHandle_t, cublasCreate, cublasDestroy, cublasSetStream> handles;
  return handles.get(device, [](cublasStatus_t s) { SYNCBN_CUBLAS_CHECK(s); });
}

#if SYNCBN_WITH_CUDNN
void throw_cudnn_error(cudnnStatus_t status, const char* expr, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                  cudnnGetErrorString(status));
}

cudnnHandle_t cudnn_handle(int device) {
  thread_local ThreadHandles<cudnnHandle_t, cudnnCreate, cudnnDestroy, cudnnSetStream> handles;
  return handles.get(device, [](cudnnStatus_t s) { SYNCBN_CUDNN_CHECK(s); });
}
#endif

}  // namespace syncbn::cuda::detail
