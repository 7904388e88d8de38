// syncbn::distributed in a build without NCCL: nccl_group throws Unsupported.

#include "syncbn/distributed/nccl.hpp"
#include "syncbn/error.hpp"

namespace syncbn::distributed {

bool has_nccl() noexcept { return false; }

std::shared_ptr<comm::ProcessGroup> nccl_group(comm::ProcessGroup&, Device, std::chrono::milliseconds) {
  SYNCBN_THROW(Unsupported, "nccl_group: this build of syncbn has no NCCL, expected one (build where nvcc and "
                            "NCCL are found, SYNCBN_CUDA=ON)");
}

}  // namespace syncbn::distributed
