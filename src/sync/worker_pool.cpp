// WorkerPool: persistent replica threads with adaptive hand-over.

#include "syncbn/sync/worker_pool.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "syncbn/error.hpp"

namespace syncbn::sync {

WorkerPool::WorkerPool(int workers, OnStart on_start)
    : workers_(workers),
      on_start_(std::move(on_start)),
      policy_(WaitPolicy{}.for_participants(workers + 1)),
      errors_(static_cast<std::size_t>(std::max(workers, 0))) {
  SYNCBN_CHECK(workers >= 1, "WorkerPool: ", workers, " workers, expected at least 1");
  threads_.reserve(static_cast<std::size_t>(workers));
  try {
    for (int i = 0; i < size(); ++i) threads_.emplace_back(&WorkerPool::loop, this, i);
  } catch (...) {
    stop_.store(true);
    work_.notify_all();
    for (auto& t : threads_) t.join();
    throw;
  }
}

WorkerPool::~WorkerPool() {
  stop_.store(true);
  work_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkerPool::loop(int index) {
  std::exception_ptr start_error;
  try {
    if (on_start_) on_start_(index);
  } catch (...) {
    start_error = std::current_exception();  // reported by every task of this worker
  }
  std::uint64_t seen = 0;
  while (true) {
    // Idle workers wait without a deadline: the predicate is "new work or
    // stop", and the destructor always sets stop.
    work_.wait_until([&] { return stop_.load() || generation_.load() != seen; }, Clock::time_point::max(),
                     policy_);
    if (stop_.load()) return;
    seen = generation_.load();
    std::exception_ptr error = start_error;
    if (!error) {
      try {
        (*task_)(index);
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error) {
      errors_[static_cast<std::size_t>(index)] = error;
      try {
        (*on_failure_)(index, error);
      } catch (...) {
        // on_failure is best effort; the error itself is returned.
      }
      // Drop this thread's reference before signalling completion: the
      // caller may destroy the exception as soon as it has the results, and
      // the worker must not touch it afterwards (exception_ptr's reference
      // count is not visible to ThreadSanitizer, which reported the release
      // here as a race with the caller reading the message).
      error = nullptr;
    }
    if (pending_.fetch_sub(1) == 1) done_.notify_all();
  }
}

std::vector<std::exception_ptr> WorkerPool::run(const std::function<void(int)>& task,
                                                const std::function<void(int, const std::exception_ptr&)>& on_failure) {
  for (auto& e : errors_) e = nullptr;
  task_ = &task;
  on_failure_ = &on_failure;
  pending_.store(size());
  generation_.fetch_add(1);  // seq_cst: publishes the task to the workers
  work_.notify_all();
  done_.wait_until([&] { return pending_.load() == 0; }, Clock::time_point::max(), policy_);
  return errors_;
}

}  // namespace syncbn::sync
