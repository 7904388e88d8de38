#pragma once
// Process groups over MPI (Debian's OpenMPI): the engine syncbn runs on
// across processes and nodes (docs/design.md, "Across processes").

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/comm/process_group.hpp"

namespace syncbn::distributed {

/// True when this build has the MPI backend (SYNCBN_MPI); without it,
/// MpiSession throws Unsupported.
bool has_mpi() noexcept;

/// MPI for this process: initializes it (MPI_Init_thread with
/// MPI_THREAD_SERIALIZED: a group's collectives may come from any thread, one
/// at a time, e.g. the thread of a SyncBatchNorm's master replica) unless the
/// application already did, and finalizes it on destruction if it
/// initialized it. One per process, alive while any of its groups is used.
/// Throws Unsupported in a build without MPI, CommError when MPI cannot give
/// the thread level, InvalidArgument when a session already exists.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  /// Every process of the job (MPI_COMM_WORLD, duplicated so that the
  /// application's own MPI traffic cannot match syncbn's).
  std::shared_ptr<comm::ProcessGroup> world() const { return world_; }
  /// The processes of the given world ranks (increasing, no duplicates) as a
  /// group, ranked in that order, e.g. {0, 1} and {2, 3} of 4 for SyncBN
  /// over pairs. Collective over the whole world, as PyTorch's new_group:
  /// every process calls it with the same list (checked first, through the
  /// world group, within `timeout`: a process that does not arrive is a
  /// Timeout, a different list a CommError on every rank); a process not in
  /// the list gets nullptr. Throws InvalidArgument for a bad list.
  std::shared_ptr<comm::ProcessGroup> new_group(const std::vector<int>& world_ranks,
                                                std::chrono::milliseconds timeout = std::chrono::minutes{5}) const;

 private:
  bool finalize_ = false;
  std::shared_ptr<comm::ProcessGroup> world_;
};

/// Ends every process of the job with `message` on stderr and exit code
/// `code` (MPI_Abort). What an application does after a collective failed:
/// MPI cannot cancel a collective under way, so the group cannot be used
/// again, and the other ranks may be blocked in theirs (they fail with their
/// own Timeout, or end here). Without MPI, prints and calls std::abort.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

}  // namespace syncbn::distributed
