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

}  // namespace syncbn::nn
