// Non-template parts of the SyncMaster rendezvous: failure bookkeeping and
// the formatting shared by its error messages.

#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "syncbn/sync/sync_master.hpp"

namespace syncbn::sync {

std::string describe_exception(const std::exception_ptr& error) {
  if (!error) return "no exception";
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

namespace detail {

std::string format_ids(const std::vector<int>& ids) {
  std::string out = "[";
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

std::exception_ptr RoundFailure::record(std::exception_ptr cause) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!cause_) {
    cause_ = std::move(cause);
    failed_.store(true);
  }
  return cause_;
}

std::exception_ptr RoundFailure::cause() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cause_;
}

void RoundFailure::throw_stale(const std::string& name) const {
  const std::exception_ptr recorded = cause();
  const std::string message = name + ": cannot start a round after a failed one (" + describe_exception(recorded) +
                              "), expected reset() or a new registration first";
  try {
    std::rethrow_exception(recorded);
  } catch (const Timeout&) {
    throw Timeout(message);
  } catch (...) {
    throw CommError(message);
  }
}

void RoundFailure::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  cause_ = nullptr;
  failed_.store(false);
}

}  // namespace detail
}  // namespace syncbn::sync
