#pragma once
// Parker: a condition variable with an adaptive spin/yield fast path.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "syncbn/sync/wait_policy.hpp"

namespace syncbn::sync {

/// Tells the CPU that this thread is busy-waiting (saves power, frees the
/// sibling hyper-thread).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// Waits for a predicate over atomics that other threads publish.
///
/// Contract: the publisher makes the predicate true with a sequentially
/// consistent store and then calls notify_all(); the predicate reads those
/// atomics with sequentially consistent loads. Together with the sleeper count
/// (also seq_cst) this is a Dekker handshake: either the waiter sees the new
/// state, or the publisher sees the sleeper and takes the mutex before
/// notifying, so a wake-up is never lost. notify_all() costs one atomic load
/// when nobody is blocked, which is the common case with spinning waiters.
class Parker {
 public:
  /// Waits until `ready()` is true or `deadline` passes; returns `ready()`.
  template <class Ready>
  bool wait_until(Ready&& ready, sync::Clock::time_point deadline, const sync::WaitPolicy& policy) {
    if (ready()) return true;
    const auto start = sync::Clock::now();
    if (policy.spin.count() > 0) {
      const auto spin_end = std::min(deadline, start + policy.spin);
      for (std::uint32_t i = 1;; ++i) {
        cpu_relax();
        if (ready()) return true;
        // Reading the clock costs ~20 ns; do it every 32 polls only.
        if ((i & 31U) == 0 && sync::Clock::now() >= spin_end) break;
      }
    }
    if (policy.yield.count() > 0) {
      const auto yield_end = std::min(deadline, start + policy.spin + policy.yield);
      do {
        std::this_thread::yield();
        if (ready()) return true;
      } while (sync::Clock::now() < yield_end);
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1);
    bool ok = true;
    if (deadline == sync::Clock::time_point::max()) {
      cv_.wait(lock, ready);
    } else {
      ok = cv_.wait_until(lock, deadline, ready);
    }
    sleepers_.fetch_sub(1);
    return ok;
  }

  /// Wakes every blocked waiter; call after publishing the new state.
  void notify_all() {
    if (sleepers_.load() == 0) return;
    // Taking the mutex orders this notify after a waiter's predicate check
    // under the lock, so the waiter is either inside cv_.wait or sees the state.
    { std::lock_guard<std::mutex> lock(mutex_); }
    cv_.notify_all();
  }

 private:
  std::atomic<std::uint32_t> sleepers_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
};

}  // namespace syncbn::sync
