#pragma once
// WorkerPool: one persistent thread per replica.

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <thread>
#include <vector>

#include "syncbn/sync/parker.hpp"
#include "syncbn/sync/wait_policy.hpp"

namespace syncbn::sync {

/// Runs one task per worker and waits for all of them. Worker i runs on its
/// own thread for the pool's lifetime, so what a runtime binds to a thread
/// (a current GPU, a thread pool of its own, thread-local caches and
/// allocator arenas) is set up once, not every step. Between tasks workers
/// wait with the adaptive policy (Note [Adaptive wait] in docs/design.md),
/// so they block after a short while: an idle pool burns no core. RAII: the
/// destructor stops and joins every worker.
class WorkerPool {
 public:
  /// Runs once on worker i's thread before its first task (e.g. making
  /// its GPU current); what it throws fails every task of that worker.
  using OnStart = std::function<void(int worker)>;

  /// Starts `workers` threads (at least 1).
  explicit WorkerPool(int workers, OnStart on_start = nullptr);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Runs task(i) on worker i for every i and waits until all returned.
  /// When task(i) throws, on_failure(i, error) runs at once on worker i's
  /// thread (to release peers blocked on it). Returns each worker's
  /// exception (null where none). One run at a time.
  std::vector<std::exception_ptr> run(const std::function<void(int)>& task,
                                      const std::function<void(int, const std::exception_ptr&)>& on_failure);

  int size() const noexcept { return workers_; }

 private:
  void loop(int index);

  int workers_;
  OnStart on_start_;
  WaitPolicy policy_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* task_ = nullptr;
  const std::function<void(int, const std::exception_ptr&)>* on_failure_ = nullptr;
  std::vector<std::exception_ptr> errors_;
  Parker work_;
  Parker done_;
  std::vector<std::thread> threads_;  // last: started after everything above exists
};

}  // namespace syncbn::sync
