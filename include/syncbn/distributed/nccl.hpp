#pragma once
// Process groups over NCCL: one GPU per rank, the communicator bootstrapped
// through another group (MPI) of the same processes (docs/design.md,
// "Across processes").

#include <chrono>
#include <memory>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/core/device.hpp"

namespace syncbn::distributed {

/// True when this build has the NCCL backend (CUDA and NCCL found).
bool has_nccl() noexcept;

/// A group of the processes of `bootstrap`, with the same ranks, whose
/// collectives run through NCCL on each rank's `device` (a CUDA device; NCCL
/// refuses two ranks on one GPU). Rank 0's NCCL id reaches the others
/// through `bootstrap` (e.g. MpiSession::world()); the communicator is made
/// without blocking and polled, so a rank that does not arrive within
/// `timeout` is a Timeout here, as in every collective of the group, after
/// which the communicator is aborted (ncclCommAbort) and the group refuses
/// further collectives. Collective over `bootstrap`. The group stages the
/// bytes of ProcessGroup's collectives through device memory on a stream of
/// its own. Throws Unsupported in a build without NCCL, InvalidArgument for
/// a device that is not a CUDA device, and CudaError / NcclError for the
/// runtime's failures.
std::shared_ptr<comm::ProcessGroup> nccl_group(comm::ProcessGroup& bootstrap, Device device,
                                               std::chrono::milliseconds timeout = std::chrono::minutes{5});

}  // namespace syncbn::distributed
