// ReplicationContext: failure handlers of a replicated module position.

#include "syncbn/nn/replication_context.hpp"

namespace syncbn::nn {

void ReplicationContext::abort(int failed, const std::string& reason) noexcept {
  for (auto& h : handlers_) {
    try {
      if (h.abort) h.abort(failed, reason);
    } catch (...) {
      // Releasing peers is best effort; the failure itself is reported by the caller.
    }
  }
}

void ReplicationContext::reset() {
  for (auto& h : handlers_)
    if (h.reset) h.reset();
}

namespace {
thread_local int current_copy = -1;
}  // namespace

ReplicaThread::ReplicaThread(int copy_id) noexcept : previous_(current_copy) { current_copy = copy_id; }

ReplicaThread::~ReplicaThread() { current_copy = previous_; }

int ReplicaThread::current() noexcept { return current_copy; }

}  // namespace syncbn::nn
