#pragma once
// FutureResult<T>: a reusable one-producer / one-consumer future.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <utility>

#include "syncbn/sync/wait_policy.hpp"
#include "syncbn/sync/parker.hpp"
#include "syncbn/error.hpp"

namespace syncbn::sync {

/// A one-to-one, thread-safe future that is reused round after round.
///
/// One producer calls put(), one consumer calls get(); after get() the future
/// is empty again. A third party may fail() it, which wakes the consumer with
/// the given exception. A value already pending wins over a failure (it was
/// produced by a round that completed); once no value is pending, every get()
/// rethrows the failure until reset().
///
/// Thread safety: put, get/wait_until/take, ready, failed and fail may run
/// concurrently; reset must not run concurrently with anything else.
template <class T>
class FutureResult {
 public:
  explicit FutureResult(WaitPolicy policy = {}) : policy_(policy) {}
  FutureResult(const FutureResult&) = delete;
  FutureResult& operator=(const FutureResult&) = delete;

  /// Publishes `value` and wakes the consumer. Never blocks.
  /// Throws CommError if a value is already pending (the consumer has not
  /// taken the previous one); the pending value is kept.
  void put(T value) {
    std::uint32_t expected = kEmpty;
    if (!state_.compare_exchange_strong(expected, kWriting, std::memory_order_acquire)) {
      SYNCBN_THROW(CommError,
                   "FutureResult::put: a value is already pending, expected the previous value "
                   "to be taken by get() first");
    }
    value_.emplace(std::move(value));
    state_.store(kReady);  // seq_cst: pairs with the Parker handshake
    parker_.notify_all();
  }

  /// Blocks until a value or a failure is present (no deadline), then takes
  /// the value or rethrows the failure.
  T get() { return get_until(Clock::time_point::max()); }

  /// Like get() but throws Timeout if nothing arrives within `timeout`
  /// (zero waits forever).
  T get_for(std::chrono::nanoseconds timeout) { return get_until(deadline_after(timeout)); }

  /// Like get() but throws Timeout if nothing arrives before `deadline`.
  T get_until(Clock::time_point deadline) {
    if (!wait_until(deadline)) {
      SYNCBN_THROW(Timeout, "FutureResult::get: no value before the deadline, expected put() or fail()");
    }
    return take();
  }

  /// Waits until a value or a failure is present or `deadline` passes;
  /// returns whether one is present. Takes nothing.
  bool wait_until(Clock::time_point deadline) { return wait_until(deadline, policy_); }

  /// wait_until() with another wait policy than the future's own.
  bool wait_until(Clock::time_point deadline, const WaitPolicy& policy) {
    return parker_.wait_until([this] { return ready() || failed(); }, deadline, policy);
  }

  /// Takes the pending value without waiting; rethrows the failure if no
  /// value is pending; throws CommError if there is neither.
  T take() {
    if (state_.load() == kReady) {
      T out = std::move(*value_);
      value_.reset();
      state_.store(kEmpty, std::memory_order_release);
      return out;
    }
    if (failed()) std::rethrow_exception(error());
    SYNCBN_THROW(CommError, "FutureResult::take: nothing to take, expected a value or a failure");
  }

  /// True when a value is pending.
  bool ready() const noexcept { return state_.load() == kReady; }

  /// True once fail() was called (until reset()).
  bool failed() const noexcept { return failed_.load(); }

  /// Fails the future with `error` and wakes the consumer. The first failure
  /// wins; later ones are ignored.
  void fail(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (error_) return;
      error_ = std::move(error);
    }
    failed_.store(true);  // seq_cst: pairs with the Parker handshake
    parker_.notify_all();
  }

  /// Drops any pending value and failure. Not concurrent with other calls.
  void reset() {
    std::lock_guard<std::mutex> lock(error_mutex_);
    value_.reset();
    error_ = nullptr;
    failed_.store(false);
    state_.store(kEmpty);
  }

 private:
  static constexpr std::uint32_t kEmpty = 0;
  static constexpr std::uint32_t kWriting = 1;
  static constexpr std::uint32_t kReady = 2;

  std::exception_ptr error() const {
    std::lock_guard<std::mutex> lock(error_mutex_);
    return error_;
  }

  WaitPolicy policy_;
  std::atomic<std::uint32_t> state_{kEmpty};
  std::optional<T> value_;
  std::atomic<bool> failed_{false};
  mutable std::mutex error_mutex_;
  std::exception_ptr error_;
  Parker parker_;
};

}  // namespace syncbn::sync
