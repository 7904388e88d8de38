#pragma once
// Whereabouts: which rendezvous each replica of a group waits in, so that a
// timeout names both sides when replicas disagree on where they are.

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace syncbn::sync {

// Note [Where the replicas wait]
// The rendezvous of one replicated model (one SyncMaster per layer and pass)
// share one Whereabouts. Each participant notes the rendezvous and round it
// enters and clears the note when it leaves. A replica that skipped a layer
// waits in the next layer's rendezvous while the others wait in the skipped
// layer's, and each side times out naming only its own rendezvous's missing
// replicas; with the notes, the timeout also says where every replica is
// ("replica 0 waits in 'a forward' round 1, replica 1 waits in 'b forward'
// round 1"), as PyTorch's desync debug mode does across processes. A note
// costs a lock and a short string copy per rendezvous entry.
class Whereabouts {
 public:
  /// For replicas 0 .. replicas - 1.
  explicit Whereabouts(int replicas);
  Whereabouts(const Whereabouts&) = delete;
  Whereabouts& operator=(const Whereabouts&) = delete;

  /// Notes that `replica` waits in rendezvous `name`, round `round`.
  void enter(int replica, const std::string& name, std::uint64_t round);
  /// Notes that `replica` left its rendezvous.
  void leave(int replica) noexcept;

  /// "; where the replicas are: replica 0 waits in 'a forward' round 1,
  /// replica 1 waits in 'b forward' round 1, replica 2 is in no rendezvous"
  /// when the replicas are not all in the same rendezvous and round; empty
  /// when they are.
  std::string disagreement() const;

 private:
  struct Place {
    std::string name;  // empty: in no rendezvous
    std::uint64_t round = 0;
  };
  mutable std::mutex mutex_;
  std::vector<Place> places_;
};

/// Notes a replica's place for the lifetime of the guard (nothing for a
/// null Whereabouts).
class WhereaboutsGuard {
 public:
  WhereaboutsGuard(Whereabouts* whereabouts, int replica, const std::string& name, std::uint64_t round)
      : whereabouts_(whereabouts), replica_(replica) {
    if (whereabouts_ != nullptr) whereabouts_->enter(replica, name, round);
  }
  ~WhereaboutsGuard() {
    if (whereabouts_ != nullptr) whereabouts_->leave(replica_);
  }
  WhereaboutsGuard(const WhereaboutsGuard&) = delete;
  WhereaboutsGuard& operator=(const WhereaboutsGuard&) = delete;

 private:
  Whereabouts* whereabouts_;
  int replica_;
};

}  // namespace syncbn::sync
