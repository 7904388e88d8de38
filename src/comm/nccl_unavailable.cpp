// The NCCL transport in a build without NCCL: never chosen by Transport::Auto.

#include "nccl_transport.hpp"
#include "syncbn/error.hpp"

namespace syncbn::comm::detail {

bool nccl_available() noexcept { return false; }

Tensor nccl_reduce_sum(const std::vector<Tensor>& /*packed*/, Device /*target*/) {
  SYNCBN_THROW(Unsupported, "reduce_add_coalesced: this build of syncbn has no NCCL");
}

std::vector<Tensor> nccl_broadcast(const Tensor& /*packed*/, const std::vector<Device>& /*devices*/) {
  SYNCBN_THROW(Unsupported, "broadcast_coalesced: this build of syncbn has no NCCL");
}

}  // namespace syncbn::comm::detail
