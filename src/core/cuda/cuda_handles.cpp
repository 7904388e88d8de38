// Per-thread cuBLAS and cuDNN handles (Note [Library handles]).

#include "cuda/cuda_handles.hpp"

#include <map>

#include "cuda/cublas_library.hpp"
#include "cuda/cuda_runtime.hpp"

namespace syncbn::cuda::detail {
namespace {

// How one library creates, destroys and binds its handles.
template <class Handle, class Status>
struct HandleFunctions {
  Status (*create)(Handle*);
  Status (*destroy)(Handle);
  Status (*set_stream)(Handle, cudaStream_t);
};

// One library's handles of this thread, by device; destroyed with the thread.
template <class Handle, class Status>
class ThreadHandles {
 public:
  explicit ThreadHandles(HandleFunctions<Handle, Status> functions) : functions_(functions) {}
  ThreadHandles(const ThreadHandles&) = delete;
  ThreadHandles& operator=(const ThreadHandles&) = delete;
  ~ThreadHandles() {
    for (auto& [device, handle] : handles_) {
      try {
        DeviceGuard guard(device);
        (void)functions_.destroy(handle);
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
    check(functions_.create(&handle));
    if (const Status status = functions_.set_stream(handle, stream_for(device)); status != Status{}) {
      (void)functions_.destroy(handle);
      check(status);
    }
    handles_.emplace(device, handle);
    return handle;
  }

 private:
  HandleFunctions<Handle, Status> functions_;
  std::map<int, Handle> handles_;
};

}  // namespace

void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: cuBLAS status " +
                  std::to_string(static_cast<int>(status)));
}

cublasHandle_t cublas_handle(int device) {
  // cublas_api() throws, naming the library, where cuBLAS cannot be opened.
  thread_local ThreadHandles<cublasHandle_t, cublasStatus_t> handles(
      {cublas_api().create, cublas_api().destroy, cublas_api().set_stream});
  return handles.get(device, [](cublasStatus_t s) { SYNCBN_CUBLAS_CHECK(s); });
}

#if SYNCBN_WITH_CUDNN
void throw_cudnn_error(cudnnStatus_t status, const char* expr, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                  cudnnGetErrorString(status));
}

cudnnHandle_t cudnn_handle(int device) {
  thread_local ThreadHandles<cudnnHandle_t, cudnnStatus_t> handles({cudnnCreate, cudnnDestroy, cudnnSetStream});
  return handles.get(device, [](cudnnStatus_t s) { SYNCBN_CUDNN_CHECK(s); });
}
#endif

}  // namespace syncbn::cuda::detail
