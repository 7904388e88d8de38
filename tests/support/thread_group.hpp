#pragma once
// An in-process engine for comm::ProcessGroup whose ranks are threads, so
// that the logic above the engine (the group's checks and failure state, the
// statistics exchange across processes) runs in every build and under the
// sanitizers; the MPI engine is tested under mpirun in tests/distributed/.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/error.hpp"

namespace syncbn::testing {

// The ranks' n-th exchanges meet in round n: each rank writes its bytes and
// waits until every rank has, or its deadline passes.
class Hub {
 public:
  explicit Hub(int size) : size_(size) {}

  void all_gather(int rank, std::int64_t round, const void* in, std::size_t bytes, void* out,
                  const comm::ProcessGroup::Wait& wait) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto& slots = rounds_[round];
    slots.resize(static_cast<std::size_t>(size_));
    slots[static_cast<std::size_t>(rank)].assign(static_cast<const std::byte*>(in),
                                                 static_cast<const std::byte*>(in) + bytes);
    ++arrived_[round];
    cv_.notify_all();
    if (!cv_.wait_until(lock, wait.deadline, [&] { return arrived_[round] == size_; }))
      SYNCBN_THROW(Timeout, "'", wait.call, "': not every thread rank arrived within ", wait.timeout.count(), " ms");
    for (int r = 0; r < size_; ++r) {
      const auto& slot = slots[static_cast<std::size_t>(r)];
      if (slot.size() != bytes) SYNCBN_THROW(CommError, "hub: rank ", r, " sent ", slot.size(), " bytes");
      std::memcpy(static_cast<std::byte*>(out) + static_cast<std::size_t>(r) * bytes, slot.data(), bytes);
    }
  }

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::int64_t, std::vector<std::vector<std::byte>>> rounds_;
  std::map<std::int64_t, int> arrived_;
};

class ThreadGroup final : public comm::ProcessGroup {
 public:
  ThreadGroup(std::shared_ptr<Hub> hub, int rank, int size) : ProcessGroup(rank, size), hub_(std::move(hub)) {}
  std::string describe() const override { return "thread group of " + std::to_string(size()) + " ranks"; }

 protected:
  void exchange(const void* in, std::size_t bytes, void* out, const Wait& wait) override {
    hub_->all_gather(rank(), round_++, in, bytes, out, wait);
  }
  void exchange_broadcast(void* data, std::size_t bytes, int root, const Wait& wait) override {
    std::vector<std::byte> all(bytes * static_cast<std::size_t>(size()));
    hub_->all_gather(rank(), round_++, data, bytes, all.data(), wait);
    std::memcpy(data, all.data() + static_cast<std::size_t>(root) * bytes, bytes);
  }

 private:
  std::shared_ptr<Hub> hub_;
  std::int64_t round_ = 0;
};

// Runs body(group) on `size` threads, one rank each; returns each rank's
// error message ("" when it returned).
inline std::vector<std::string> run_ranks(int size, const std::function<void(comm::ProcessGroup&)>& body) {
  auto hub = std::make_shared<Hub>(size);
  std::vector<std::unique_ptr<ThreadGroup>> groups;
  for (int r = 0; r < size; ++r) groups.push_back(std::make_unique<ThreadGroup>(hub, r, size));
  std::vector<std::string> errors(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        body(*groups[static_cast<std::size_t>(r)]);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = std::string(typeid(e).name()) + ": " + e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}


}  // namespace syncbn::testing
