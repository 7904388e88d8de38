// WorkerPool: one persistent thread per worker, set up once, its tasks'
// exceptions returned per worker.

#include <catch2/catch.hpp>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "syncbn/error.hpp"
#include "syncbn/sync/worker_pool.hpp"

using syncbn::sync::WorkerPool;

namespace {

const std::function<void(int, const std::exception_ptr&)> kNoFailureHandler = [](int, const std::exception_ptr&) {};

std::string message_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace

TEST_CASE("A worker pool runs each worker's tasks on the thread that ran its start, run after run", "[sync][threads]") {
  const int workers = GENERATE(1, 3);
  CAPTURE(workers);
  std::vector<std::thread::id> started(static_cast<std::size_t>(workers));
  WorkerPool pool(workers, [&](int i) { started[static_cast<std::size_t>(i)] = std::this_thread::get_id(); });
  REQUIRE(pool.size() == workers);
  std::vector<int> runs(static_cast<std::size_t>(workers), 0);
  std::atomic<int> elsewhere{0};
  for (int run = 0; run < 50; ++run) {
    const auto errors = pool.run(
        [&](int i) {
          const auto u = static_cast<std::size_t>(i);
          if (std::this_thread::get_id() != started[u]) elsewhere.fetch_add(1);
          ++runs[u];  // only worker i touches runs[i]
        },
        kNoFailureHandler);
    for (const auto& e : errors) CHECK(e == nullptr);
  }
  CHECK(elsewhere.load() == 0);
  CHECK(runs == std::vector<int>(static_cast<std::size_t>(workers), 50));
  for (const auto& id : started) CHECK(id != std::this_thread::get_id());
}

TEST_CASE("A worker pool returns each failed task's exception after running the failure handler on its worker",
          "[sync][threads]") {
  WorkerPool pool(3);
  std::vector<int> handled(3, 0);
  const auto errors = pool.run(
      [](int i) {
        if (i == 1) throw std::runtime_error("worker 1 failed");
      },
      [&](int i, const std::exception_ptr& error) {
        handled[static_cast<std::size_t>(i)] = message_of(error) == "worker 1 failed" ? 1 : -1;
      });
  REQUIRE(errors.size() == 3);
  CHECK(errors[0] == nullptr);
  CHECK(errors[2] == nullptr);
  REQUIRE(errors[1] != nullptr);
  CHECK(message_of(errors[1]) == "worker 1 failed");
  CHECK(handled == std::vector<int>{0, 1, 0});
  // The next run starts clean.
  const auto next = pool.run([](int) {}, kNoFailureHandler);
  for (const auto& e : next) CHECK(e == nullptr);
}

TEST_CASE("A worker whose start failed reports that failure from every task and the others run", "[sync][threads]") {
  WorkerPool pool(2, [](int i) {
    if (i == 0) throw std::runtime_error("no GPU 0");
  });
  for (int run = 0; run < 2; ++run) {
    std::atomic<int> ran{0};
    const auto errors = pool.run([&](int) { ran.fetch_add(1); }, kNoFailureHandler);
    REQUIRE(errors[0] != nullptr);
    CHECK(message_of(errors[0]) == "no GPU 0");
    CHECK(errors[1] == nullptr);
    CHECK(ran.load() == 1);
  }
}

TEST_CASE("A worker pool of no workers is refused", "[sync]") {
  CHECK_THROWS_MATCHES(WorkerPool(0), syncbn::InvalidArgument,
                       Catch::Matchers::Message("WorkerPool: 0 workers, expected at least 1"));
}
