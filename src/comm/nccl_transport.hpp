#pragma once
// NCCL transport of the collectives, for replicas on distinct GPUs of one
// process (NCCL refuses two ranks on one GPU; logical replicas sharing a GPU
// use the copy transport).

#include <vector>

#include "syncbn/core/tensor.hpp"

namespace syncbn::comm::detail {

/// True when this build has NCCL.
bool nccl_available() noexcept;

/// Sum of `packed` (one flat buffer per distinct GPU, same dtype and size)
/// on `target`, one of those GPUs, with ncclReduce.
Tensor nccl_reduce_sum(const std::vector<Tensor>& packed, Device target);

/// Copies of `packed` (on one of `devices`, all distinct GPUs) on every
/// device, with ncclBroadcast; element d lives on devices[d].
std::vector<Tensor> nccl_broadcast(const Tensor& packed, const std::vector<Device>& devices);

}  // namespace syncbn::comm::detail
