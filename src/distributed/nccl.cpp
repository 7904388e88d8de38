// The NCCL backend of syncbn::distributed: a ProcessGroup over a non-blocking NCCL
// communicator, one GPU per rank, polled to the deadline (Note [Waiting on
// NCCL]).

#include "syncbn/distributed/nccl.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "syncbn/error.hpp"

namespace syncbn::distributed {
namespace {

void check_cuda(cudaError_t code, const char* what) {
  if (code != cudaSuccess) SYNCBN_THROW(CudaError, "nccl_group: ", what, " failed: ", cudaGetErrorString(code));
}

void check_nccl(ncclResult_t code, const char* what) {
  if (code != ncclSuccess && code != ncclInProgress)
    SYNCBN_THROW(NcclError, "nccl_group: ", what, " failed: ", ncclGetErrorString(code));
}

// Makes `device` current and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { (void)cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Note [Waiting on NCCL]
// As with MPI (Note [Waiting on MPI] in mpi.cpp), a rank must not wait
// forever for the others. The communicator is non-blocking (config.blocking
// = 0): its creation and every collective return at once, and the group
// polls ncclCommGetAsyncError (NCCL's own progress) and then the stream
// (the collective's kernels) until both are done or the deadline passes.
// On the deadline the communicator is aborted (ncclCommAbort, which ends
// its kernels, so that the device buffers may go) and the collective throws
// Timeout; ProcessGroup then refuses the group's later collectives.
bool wait_for_nccl(ncclComm_t comm, std::chrono::steady_clock::time_point deadline, const char* what) {
  for (;;) {
    ncclResult_t state = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(comm, &state), "ncclCommGetAsyncError");
    if (state == ncclSuccess) return true;
    check_nccl(state, what);  // an error other than "in progress"
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
}

class NcclProcessGroup final : public comm::ProcessGroup {
 public:
  NcclProcessGroup(int rank, int size, int device, ncclComm_t comm, cudaStream_t stream)
      : ProcessGroup(rank, size), device_(device), comm_(comm), stream_(stream) {}
  ~NcclProcessGroup() override {
    DeviceGuard guard(device_);
    if (comm_ != nullptr) (void)ncclCommDestroy(comm_);
    (void)cudaStreamSynchronize(stream_);
    (void)cudaFree(send_);
    (void)cudaFree(receive_);
    (void)cudaStreamDestroy(stream_);
  }

  std::string describe() const override {
    return "NCCL group of " + std::to_string(size()) + " ranks (this rank on cuda:" + std::to_string(device_) + ")";
  }

 protected:
  void exchange(const void* in, std::size_t bytes, void* out, const Wait& wait) override {
    DeviceGuard guard(device_);
    reserve(bytes, bytes * static_cast<std::size_t>(size()));
    check_cuda(cudaMemcpyAsync(send_, in, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    check_nccl(ncclAllGather(send_, receive_, bytes, ncclUint8, comm_, stream_), "ncclAllGather");
    finish(wait, out, bytes * static_cast<std::size_t>(size()));
  }

  void exchange_broadcast(void* data, std::size_t bytes, int root, const Wait& wait) override {
    DeviceGuard guard(device_);
    reserve(0, bytes);
    check_cuda(cudaMemcpyAsync(receive_, data, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    check_nccl(ncclBroadcast(receive_, receive_, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    finish(wait, data, bytes);
  }

 private:
  void reserve(std::size_t send_bytes, std::size_t receive_bytes) {
    if (comm_ == nullptr) SYNCBN_THROW(CommError, describe(), ": the communicator was aborted, expected a working one");
    if (send_bytes > send_capacity_) {
      (void)cudaFree(send_);
      send_ = nullptr;
      check_cuda(cudaMalloc(&send_, send_bytes), "cudaMalloc");
      send_capacity_ = send_bytes;
    }
    if (receive_bytes > receive_capacity_) {
      (void)cudaFree(receive_);
      receive_ = nullptr;
      check_cuda(cudaMalloc(&receive_, receive_bytes), "cudaMalloc");
      receive_capacity_ = receive_bytes;
    }
  }

  // Waits for the collective (NCCL's progress, then the stream), then
  // copies `bytes` of the result into out; on the deadline, aborts.
  void finish(const Wait& wait, void* out, std::size_t bytes) {
    bool ready = wait_for_nccl(comm_, wait.deadline, "a collective");
    while (ready) {
      const cudaError_t state = cudaStreamQuery(stream_);
      if (state == cudaSuccess) break;
      if (state != cudaErrorNotReady) check_cuda(state, "cudaStreamQuery");
      ncclResult_t async = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      check_nccl(async, "a collective");
      if (std::chrono::steady_clock::now() >= wait.deadline)
        ready = false;
      else
        std::this_thread::yield();
    }
    if (!ready) {
      (void)ncclCommAbort(comm_);
      comm_ = nullptr;
      SYNCBN_THROW(Timeout, "'", wait.call, "': not every rank of ", describe(), " arrived within ",
                   wait.timeout.count(), " ms, expected all ", size(), " (the communicator was aborted)");
    }
    check_cuda(cudaMemcpy(out, receive_, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }

  int device_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  void* send_ = nullptr;
  void* receive_ = nullptr;
  std::size_t send_capacity_ = 0, receive_capacity_ = 0;
};

}  // namespace

bool has_nccl() noexcept { return true; }

std::shared_ptr<comm::ProcessGroup> nccl_group(comm::ProcessGroup& bootstrap, Device device,
                                               std::chrono::milliseconds timeout) {
  SYNCBN_CHECK(device.is_cuda(), "nccl_group: device ", device, ", expected a CUDA device (one per rank)");
  SYNCBN_CHECK(timeout.count() >= 0, "nccl_group: timeout ", timeout.count(), " ms, expected >= 0 (0 waits forever)");
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  SYNCBN_CHECK(device.index() < devices, "nccl_group: device ", device, ", expected one of this machine's ", devices,
               " CUDA device(s)");
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  bootstrap.broadcast(std::as_writable_bytes(std::span(&id, 1)), 0, "nccl_group: rank 0's NCCL id", timeout);
  const auto deadline = timeout.count() == 0 ? std::chrono::steady_clock::time_point::max()
                                             : std::chrono::steady_clock::now() + timeout;
  DeviceGuard guard(device.index());
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  try {
    check_nccl(ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config), "ncclCommInitRankConfig");
    if (!wait_for_nccl(comm, deadline, "ncclCommInitRankConfig")) {
      (void)ncclCommAbort(comm);
      comm = nullptr;
      SYNCBN_THROW(Timeout, "nccl_group: not every rank of ", bootstrap.describe(), " made its NCCL communicator within ",
                   timeout.count(), " ms, expected all ", bootstrap.size());
    }
  } catch (...) {
    if (comm != nullptr) (void)ncclCommAbort(comm);
    (void)cudaStreamDestroy(stream);
    throw;
  }
  return std::make_shared<NcclProcessGroup>(bootstrap.rank(), bootstrap.size(), device.index(), comm, stream);
}

}  // namespace syncbn::distributed
