#pragma once
// ReplicationContext: what the copies of one module position share while
// the replication callback (Module::on_replicate) wires them together.

#include <any>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "syncbn/core/device.hpp"
#include "syncbn/error.hpp"
#include "syncbn/sync/whereabouts.hpp"

namespace syncbn::nn {

/// Shared by all copies of one module position while parallel::replicate
/// runs the replication callback (Module::on_replicate): copy 0
/// (the master, called first) typically stores an object here (e.g. a
/// SyncMaster) that the other copies then connect to. Layers that block in a
/// rendezvous also register how to release it when a replica fails.
class ReplicationContext {
 public:
  ReplicationContext(std::string name, std::vector<Device> devices,
                     std::shared_ptr<sync::Whereabouts> whereabouts = nullptr)
      : name_(std::move(name)), devices_(std::move(devices)), whereabouts_(std::move(whereabouts)) {}

  /// The module position's dotted path in the replicated tree ("" for the
  /// root), for error messages such as a rendezvous's timeout.
  const std::string& name() const noexcept { return name_; }
  /// Number of copies being made.
  int copies() const noexcept { return static_cast<int>(devices_.size()); }
  /// The device of copy `copy_id`.
  Device device(int copy_id) const { return devices_.at(static_cast<std::size_t>(copy_id)); }

  /// Shared by every position of one replication: a rendezvous given it in
  /// its SyncOptions lets a timeout say where every replica waits (Note
  /// [Where the replicas wait]). Null when the replicas are not made by
  /// parallel::replicate.
  const std::shared_ptr<sync::Whereabouts>& whereabouts() const noexcept { return whereabouts_; }
  /// Stores the position's shared object (replacing any earlier one).
  template <class T>
  void set(std::shared_ptr<T> value) {
    value_ = std::move(value);
  }
  /// The shared object; InvalidArgument naming `who` when none of type T was set.
  template <class T>
  std::shared_ptr<T> get(const std::string& who) const {
    const auto* value = std::any_cast<std::shared_ptr<T>>(&value_);
    SYNCBN_CHECK(value != nullptr && *value != nullptr, who,
                 ": the replication context holds no shared object of the expected type; was copy 0 replicated "
                 "first?");
    return *value;
  }

  /// Registers how to release replicas blocked in this position's
  /// rendezvous when replica `failed` fails elsewhere (abort), and how to
  /// make the rendezvous usable again once every replica is idle (reset).
  void on_failure(std::function<void(int failed, const std::string& reason)> abort, std::function<void()> reset) {
    handlers_.push_back({std::move(abort), std::move(reset)});
  }

  /// Runs the abort handlers; never throws.
  void abort(int failed, const std::string& reason) noexcept;
  /// Runs the reset handlers.
  void reset();

 private:
  struct Handlers {
    std::function<void(int, const std::string&)> abort;
    std::function<void()> reset;
  };
  std::string name_;
  std::vector<Device> devices_;
  std::shared_ptr<sync::Whereabouts> whereabouts_;
  std::any value_;
  std::vector<Handlers> handlers_;
};

/// Note [Replica threads]: a runtime that runs copy k of a replicated model
/// on a thread marks the thread with a ReplicaThread(k) for that time. A
/// module whose replica_id() differs from the thread's copy was reached
/// through something the replicas share, typically a child kept in a member
/// shared_ptr, which every copy of the parent still points to the original
/// child through; its forward would otherwise run the original's layer (with
/// the original's parameters, device and no synchronisation) and fail, or
/// not, far from the cause. Module::check_replica_thread turns that into an
/// error naming the module and both copies.
class ReplicaThread {
 public:
  explicit ReplicaThread(int copy_id) noexcept;
  ~ReplicaThread();
  ReplicaThread(const ReplicaThread&) = delete;
  ReplicaThread& operator=(const ReplicaThread&) = delete;
  /// The copy the calling thread runs; -1 outside any ReplicaThread.
  static int current() noexcept;

 private:
  int previous_;
};

}  // namespace syncbn::nn
