// NCCL transport: one communicator group per list of distinct GPUs, created
// with ncclCommInitAll on first use and kept for the process's lifetime.

#include "nccl_transport.hpp"

#include <nccl.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "syncbn/core/cuda.hpp"
#include "syncbn/error.hpp"

/// Throws syncbn::NcclError unless `expr` returns ncclSuccess.
#define SYNCBN_NCCL_CHECK(expr)                                                                      \
  do {                                                                                               \
    const ncclResult_t syncbn_result_ = (expr);                                                      \
    if (syncbn_result_ != ncclSuccess)                                                               \
      throw ::syncbn::NcclError(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #expr \
                                " failed: " + ncclGetErrorString(syncbn_result_));                  \
  } while (false)

namespace syncbn::comm::detail {
namespace {

/// The communicators of one list of GPUs (rank r on devices[r]). RAII.
class CommGroup {
 public:
  explicit CommGroup(const std::vector<int>& devices) : comms_(devices.size()) {
    SYNCBN_NCCL_CHECK(ncclCommInitAll(comms_.data(), static_cast<int>(devices.size()), devices.data()));
  }
  ~CommGroup() {
    for (ncclComm_t c : comms_)
      if (c != nullptr) (void)ncclCommDestroy(c);
  }
  CommGroup(const CommGroup&) = delete;
  CommGroup& operator=(const CommGroup&) = delete;
  ncclComm_t operator[](std::size_t rank) const { return comms_[rank]; }

 private:
  std::vector<ncclComm_t> comms_;
};

/// Communicator groups by device list. Creating a group is collective over
/// its GPUs and costs milliseconds, so groups are kept (like the per-device
/// streams, Note [One stream per device]).
CommGroup& comm_group(const std::vector<int>& devices) {
  static std::mutex mutex;
  static std::map<std::vector<int>, std::unique_ptr<CommGroup>> groups;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = groups[devices];
  if (!slot) slot = std::make_unique<CommGroup>(devices);
  return *slot;
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::Float32: return ncclFloat32;
    case DType::Float64: return ncclFloat64;
    case DType::Float16: return ncclFloat16;
    case DType::BFloat16: return ncclBfloat16;
    case DType::Int64: return ncclInt64;
  }
  SYNCBN_THROW(InvalidArgument, "nccl: unknown dtype");
}

/// Ends an NCCL group even when a call inside it throws.
class GroupGuard {
 public:
  GroupGuard() { SYNCBN_NCCL_CHECK(ncclGroupStart()); }
  ~GroupGuard() noexcept(false) {
    if (std::uncaught_exceptions() == 0) SYNCBN_NCCL_CHECK(ncclGroupEnd());
    else (void)ncclGroupEnd();
  }
  GroupGuard(const GroupGuard&) = delete;
  GroupGuard& operator=(const GroupGuard&) = delete;
};

// syncbn's stream of GPU `device`, on which NCCL runs in order with syncbn's own work.
cudaStream_t stream_of(int device) { return static_cast<cudaStream_t>(cuda::native_stream(Device::cuda(device))); }

int rank_of(const std::vector<int>& devices, Device d) {
  return static_cast<int>(std::find(devices.begin(), devices.end(), d.index()) - devices.begin());
}

}  // namespace

bool nccl_available() noexcept { return true; }

Tensor nccl_reduce_sum(const std::vector<Tensor>& packed, Device target) {
  std::vector<int> devices;
  for (const Tensor& p : packed) devices.push_back(p.device().index());
  CommGroup& comms = comm_group(devices);
  const int root = rank_of(devices, target);
  Tensor out = Tensor::empty(packed.front().shape(), packed.front().dtype(), target);
  const auto type = nccl_type(out.dtype());
  const auto count = static_cast<std::size_t>(out.numel());
  {
    GroupGuard group;
    for (std::size_t r = 0; r < packed.size(); ++r) {
      void* recv = static_cast<int>(r) == root ? out.raw_data() : packed[r].raw_data();
      SYNCBN_NCCL_CHECK(ncclReduce(packed[r].raw_data(), recv, count, type, ncclSum, root, comms[r],
                                   stream_of(devices[r])));
    }
  }
  return out;
}

std::vector<Tensor> nccl_broadcast(const Tensor& packed, const std::vector<Device>& devices) {
  std::vector<int> indices;
  for (Device d : devices) indices.push_back(d.index());
  CommGroup& comms = comm_group(indices);
  const int root = rank_of(indices, packed.device());
  std::vector<Tensor> out;
  for (Device d : devices) out.push_back(Tensor::empty(packed.shape(), packed.dtype(), d));
  const auto type = nccl_type(packed.dtype());
  const auto count = static_cast<std::size_t>(packed.numel());
  {
    GroupGuard group;
    for (std::size_t r = 0; r < devices.size(); ++r) {
      SYNCBN_NCCL_CHECK(ncclBroadcast(packed.raw_data(), out[r].raw_data(), count, type, root, comms[r],
                                      stream_of(indices[r])));
    }
  }
  return out;
}

}  // namespace syncbn::comm::detail
