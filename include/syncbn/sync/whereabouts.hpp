#pragma once
// Whereabouts: which rendezvous each replica of a group waits in, so that a
// timeout names both sides when replicas disagree on where they are.

#include <cstdint>
#include <exception>
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
//
// A replica that leaves its rendezvous on an error (its own timeout, an
// abort) keeps its note, marked as failed, until the group is reset: the
// replicas' timeouts race, and the one reported may be the second, written
// after the first had left; "replica 0 failed in 'b forward' round 1" still
// names where it was.
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
  /// Notes that `replica` left its rendezvous on an error: its place stays
  /// named, as failed, until it enters another one or clear().
  void leave_on_failure(int replica) noexcept;
  /// Forgets every note (the group is reset after a failed step).
  void clear() noexcept;

  /// "; where the replicas are: replica 0 waits in 'a forward' round 1,
  /// replica 1 failed in 'b forward' round 1, replica 2 is in no rendezvous"
  /// when the replicas are not all in the same rendezvous and round; empty
  /// when they are.
  std::string disagreement() const;

 private:
  struct Place {
    std::string name;  // empty: in no rendezvous
    std::uint64_t round = 0;
    bool failed = false;  // left on an error
  };
  mutable std::mutex mutex_;
  std::vector<Place> places_;
};

/// Notes a replica's place for the lifetime of the guard (nothing for a
/// null Whereabouts); a guard destroyed by an exception leaves on failure.
class WhereaboutsGuard {
 public:
  WhereaboutsGuard(Whereabouts* whereabouts, int replica, const std::string& name, std::uint64_t round)
      : whereabouts_(whereabouts), replica_(replica), exceptions_(std::uncaught_exceptions()) {
    if (whereabouts_ != nullptr) whereabouts_->enter(replica, name, round);
  }
  ~WhereaboutsGuard() {
    if (whereabouts_ == nullptr) return;
    if (std::uncaught_exceptions() > exceptions_) {
      whereabouts_->leave_on_failure(replica_);
    } else {
      whereabouts_->leave(replica_);
    }
  }
  WhereaboutsGuard(const WhereaboutsGuard&) = delete;
  WhereaboutsGuard& operator=(const WhereaboutsGuard&) = delete;

 private:
  Whereabouts* whereabouts_;
  int replica_;
  int exceptions_;  // in flight when the guard was made
};

}  // namespace syncbn::sync
