#pragma once
// WorkerPool: one persistent thread per replica device.

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <thread>
#include <vector>

#include "syncbn/sync/wait_policy.hpp"
#include "syncbn/sync/parker.hpp"
#include "syncbn/core/device.hpp"

namespace syncbn::parallel::detail {

/// Runs one task per worker and waits for all of them. Worker i runs on its
/// own thread for the pool's lifetime (a CUDA worker makes its GPU current
/// once). Between tasks workers wait with the adaptive policy, so they block
/// after a short while: an idle pool burns no core. RAII: the destructor
/// stops and joins every worker.
class WorkerPool {
 public:
  /// Starts one worker per device.
  explicit WorkerPool(std::vector<Device> devices);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Runs task(i) on worker i for every i and waits until all returned.
  /// When task(i) throws, on_failure(i, error) runs at once on worker i's
  /// thread (to release peers blocked on it). Returns each worker's
  /// exception (null where none). One run at a time.
  std::vector<std::exception_ptr> run(const std::function<void(int)>& task,
                                      const std::function<void(int, const std::exception_ptr&)>& on_failure);

  int size() const noexcept { return static_cast<int>(devices_.size()); }

 private:
  void loop(int index);

  std::vector<Device> devices_;
  sync::WaitPolicy policy_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* task_ = nullptr;
  const std::function<void(int, const std::exception_ptr&)>* on_failure_ = nullptr;
  std::vector<std::exception_ptr> errors_;
  sync::Parker work_;
  sync::Parker done_;
  std::vector<std::thread> threads_;  // last: started after everything above exists
};

}  // namespace syncbn::parallel::detail
