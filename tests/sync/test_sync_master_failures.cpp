// SyncMaster / SlavePipe failure semantics: every failure reaches every
// participant, nothing hangs, and the object can be used again afterwards.

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/seeds.hpp"
#include "support/threads.hpp"
#include "support/matchers.hpp"
#include "syncbn/sync/sync_master.hpp"

using syncbn::CommError;
using syncbn::Timeout;
using syncbn::sync::SlavePipe;
using syncbn::sync::SyncMaster;
using syncbn::sync::SyncOptions;
using syncbn::testing::capture_in_threads;
using Catch::Matchers::Contains;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using namespace std::chrono_literals;

namespace {

using Master = SyncMaster<int, int>;
using Pipe = SlavePipe<int, int>;

// Replies with the sum of all messages to everyone.
std::vector<std::pair<int, int>> sum_all(std::vector<std::pair<int, int>> msgs) {
  int total = 0;
  for (const auto& m : msgs) total += m.second;
  std::vector<std::pair<int, int>> replies;
  for (const auto& m : msgs) replies.emplace_back(m.first, total);
  return replies;
}

SyncOptions options(std::chrono::milliseconds timeout = 10000ms) { return SyncOptions{"BN3", timeout, {}}; }

std::vector<Pipe> register_slaves(Master& master, int k) {
  std::vector<Pipe> pipes;
  for (int id = 1; id < k; ++id) pipes.push_back(master.register_slave(id));
  return pipes;
}

// Runs one round in which every replica takes part; returns each one's exception.
std::vector<std::exception_ptr> one_round(Master& master, std::vector<Pipe>& pipes) {
  return capture_in_threads(static_cast<int>(pipes.size()) + 1, [&](int id) {
    if (id == 0) master.run_master(1);
    else pipes[static_cast<std::size_t>(id - 1)].run_slave(1);
  });
}

std::string what_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  }
}

template <class E>
bool is(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
}

void check_round_succeeds(Master& master, std::vector<Pipe>& pipes) {
  for (const auto& e : one_round(master, pipes)) {
    CHECK(e == nullptr);
    if (e) WARN(what_of(e));
  }
}

}  // namespace

TEST_CASE("An exception in the master callback reaches every participant", "[comm][threads]") {
  const int k = GENERATE(1, 2, 4, 8);
  CAPTURE(k);
  bool explode = true;
  Master master([&](std::vector<std::pair<int, int>> msgs) {
    if (explode) throw std::logic_error("statistics overflow");
    return sum_all(std::move(msgs));
  }, options());
  auto pipes = register_slaves(master, k);

  const auto errors = one_round(master, pipes);
  REQUIRE(errors[0] != nullptr);
  CHECK(what_of(errors[0]) == "statistics overflow");  // the master sees the original exception
  CHECK(is<std::logic_error>(errors[0]));
  for (int id = 1; id < k; ++id) {
    const auto& e = errors[static_cast<std::size_t>(id)];
    REQUIRE(e != nullptr);
    CHECK(is<CommError>(e));
    CHECK_THAT(what_of(e), Contains("BN3: master callback failed in round 1 on replica 0: statistics overflow"));
  }

  // The failed registration refuses new rounds until reset().
  CHECK(master.failed());
  for (const auto& e : one_round(master, pipes)) {
    REQUIRE(e != nullptr);
    CHECK(is<CommError>(e));
    CHECK_THAT(what_of(e), Contains("cannot start a round after a failed one"));
  }
  master.reset();
  explode = false;
  CHECK_FALSE(master.failed());
  check_round_succeeds(master, pipes);
}

TEST_CASE("An abort from a slave reaches the master and the other slaves", "[comm][threads]") {
  const int k = GENERATE(2, 3, 4, 8);
  CAPTURE(k);
  Master master(sum_all, options());
  auto pipes = register_slaves(master, k);
  const int aborter = k - 1;

  const auto errors = capture_in_threads(k, [&](int id) {
    if (id == 0) master.run_master(1);
    else if (id == aborter) pipes[static_cast<std::size_t>(id - 1)].abort("input has NaN");
    else pipes[static_cast<std::size_t>(id - 1)].run_slave(1);
  });
  for (int id = 0; id < k; ++id) {
    if (id == aborter) {
      CHECK(errors[static_cast<std::size_t>(id)] == nullptr);
      continue;
    }
    const auto& e = errors[static_cast<std::size_t>(id)];
    REQUIRE(e != nullptr);
    CHECK(is<CommError>(e));
    CHECK_FALSE(is<Timeout>(e));
    // The aborter never entered the round: the round failed is round 1.
    CHECK_THAT(what_of(e), Contains("round 1 aborted by replica " + std::to_string(aborter) + ": input has NaN"));
  }
  master.reset();
  check_round_succeeds(master, pipes);
}

TEST_CASE("An abort by the master with a captured exception reaches every slave", "[comm][threads]") {
  Master master(sum_all, options());
  auto pipes = register_slaves(master, 4);
  const auto errors = capture_in_threads(4, [&](int id) {
    if (id == 0) {
      try {
        throw std::runtime_error("replica 0 ran out of memory");
      } catch (...) {
        master.abort(std::current_exception());
      }
    } else {
      pipes[static_cast<std::size_t>(id - 1)].run_slave(1);
    }
  });
  for (int id = 1; id < 4; ++id) {
    CHECK(is<CommError>(errors[static_cast<std::size_t>(id)]));
    CHECK_THAT(what_of(errors[static_cast<std::size_t>(id)]),
               Contains("round 1 aborted by replica 0: replica 0 ran out of memory"));
  }
}

TEST_CASE("A missing slave raises Timeout naming it on every participant", "[comm][threads]") {
  const auto timeout = 100ms;
  Master master(sum_all, options(timeout));
  auto pipes = register_slaves(master, 4);
  const auto start = std::chrono::steady_clock::now();
  const auto errors = capture_in_threads(4, [&](int id) {
    if (id == 0) master.run_master(1);
    else if (id != 2) pipes[static_cast<std::size_t>(id - 1)].run_slave(1);  // replica 2 never arrives
  });
  CHECK(std::chrono::steady_clock::now() - start >= timeout);
  for (int id : {0, 1, 3}) {
    const auto& e = errors[static_cast<std::size_t>(id)];
    REQUIRE(e != nullptr);
    CHECK(is<Timeout>(e));
    CHECK_THAT(what_of(e), Contains("BN3: round 1 timed out after 100 ms"));
    CHECK_THAT(what_of(e), Contains("still waiting for replica(s) [2]"));
  }
  // The late replica learns about the failure at once.
  CHECK_THROWS_AS(pipes[1].run_slave(1), Timeout);
}

TEST_CASE("A missing master raises Timeout naming replica 0 on every slave", "[comm][threads]") {
  Master master(sum_all, options(50ms));
  auto pipes = register_slaves(master, 3);
  const auto errors = capture_in_threads(2, [&](int t) { pipes[static_cast<std::size_t>(t)].run_slave(1); });
  for (const auto& e : errors) {
    REQUIRE(e != nullptr);
    CHECK(is<Timeout>(e));
    CHECK_THAT(what_of(e), Contains("still waiting for replica(s) [0]"));
  }
  CHECK_THROWS_AS(master.run_master(1), Timeout);
}

TEST_CASE("A callback that outlives the timeout fails the round on the master too", "[comm][threads]") {
  Master master([](std::vector<std::pair<int, int>> msgs) {
    std::this_thread::sleep_for(150ms);
    return sum_all(std::move(msgs));
  }, options(30ms));
  auto pipes = register_slaves(master, 2);
  const auto errors = one_round(master, pipes);
  for (const auto& e : errors) {
    REQUIRE(e != nullptr);
    CHECK(is<Timeout>(e));
    CHECK_THAT(what_of(e), Contains("waiting for the master callback on replica 0 to return"));
  }
}

TEST_CASE("A callback that returns a wrong set of ids fails the round for everyone", "[comm][threads]") {
  using Replies = std::vector<std::pair<int, int>>;
  const std::string kind = GENERATE(as<std::string>{}, "missing", "duplicate", "unknown", "master not first", "extra");
  CAPTURE(kind);
  Master master([&](std::vector<std::pair<int, int>> msgs) -> Replies {
    Replies r = sum_all(std::move(msgs));  // ids 0, 1, 2
    if (kind == "missing") r.pop_back();
    if (kind == "duplicate") r[2].first = 1;
    if (kind == "unknown") r[2].first = 9;
    if (kind == "master not first") std::swap(r[0], r[1]);
    if (kind == "extra") r.emplace_back(3, 0);
    return r;
  }, options());
  auto pipes = register_slaves(master, 3);
  const auto errors = one_round(master, pipes);
  for (const auto& e : errors) {
    REQUIRE(e != nullptr);
    CHECK(is<CommError>(e));
    CHECK_THAT(what_of(e), Contains("master callback returned replies for ids"));
    CHECK_THAT(what_of(e), Contains("expected [0, 1, 2] with the master's first"));
  }
}

TEST_CASE("Registering after a failure starts a fresh registration that works", "[comm][threads]") {
  bool explode = true;
  Master master([&](std::vector<std::pair<int, int>> msgs) {
    if (explode) throw std::runtime_error("boom");
    return sum_all(std::move(msgs));
  }, options());
  auto pipes = register_slaves(master, 3);
  for (const auto& e : one_round(master, pipes)) CHECK(e != nullptr);
  explode = false;
  auto fresh = register_slaves(master, 3);
  check_round_succeeds(master, fresh);
  check_round_succeeds(master, fresh);
}

TEST_CASE("Destroying a pipe fails its registration at once instead of timing out", "[comm]") {
  Master master(sum_all, options(60000ms));
  auto pipes = register_slaves(master, 3);
  check_round_succeeds(master, pipes);
  pipes.pop_back();  // replica 2 is gone
  CHECK_THROWS_MATCHES(master.run_master(1), CommError, MessageContains("the pipe of replica 2 was destroyed"));
  CHECK_THROWS_MATCHES(master.reset(), CommError, MessageContains("expected re-registration"));
  auto fresh = register_slaves(master, 3);
  check_round_succeeds(master, fresh);
}

TEST_CASE("Destroying the SyncMaster wakes waiting slaves with CommError", "[comm][threads]") {
  auto master = std::make_unique<Master>(sum_all, options(60000ms));
  auto pipes = register_slaves(*master, 3);
  std::vector<std::exception_ptr> errors(2);
  std::vector<std::thread> slaves;
  for (int t = 0; t < 2; ++t) {
    slaves.emplace_back([&, t] {
      try {
        pipes[static_cast<std::size_t>(t)].run_slave(1);
      } catch (...) {
        errors[static_cast<std::size_t>(t)] = std::current_exception();
      }
    });
  }
  std::this_thread::sleep_for(20ms);
  master.reset();
  for (auto& t : slaves) t.join();
  for (const auto& e : errors) {
    REQUIRE(e != nullptr);
    CHECK_THAT(what_of(e), Contains("the SyncMaster was destroyed"));
  }
}

TEST_CASE("reset refuses while a participant is still inside a round", "[comm][threads]") {
  Master master(sum_all, options(200ms));
  auto pipes = register_slaves(master, 2);
  std::exception_ptr slave_error;
  std::thread slave([&] {
    try {
      pipes[0].run_slave(1);  // no master: waits until the timeout
    } catch (...) {
      slave_error = std::current_exception();
    }
  });
  // Wait until the slave is inside (its round counter moved) without sleeping blindly.
  std::optional<std::string> refused;
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!refused && std::chrono::steady_clock::now() < give_up) {
    try {
      master.reset();
      std::this_thread::yield();
    } catch (const CommError& e) {
      refused = e.what();
    }
  }
  slave.join();
  REQUIRE(refused.has_value());
  CHECK_THAT(*refused, Contains("BN3: reset: 1 participant(s) still inside a round, expected 0"));
  CHECK(is<Timeout>(slave_error));
  master.reset();
  check_round_succeeds(master, pipes);
}

TEST_CASE("A second concurrent run_master is refused", "[comm][threads]") {
  std::string second;
  Master* self = nullptr;
  Master master([&](std::vector<std::pair<int, int>> msgs) {
    std::thread other([&] {
      try {
        self->run_master(1);
      } catch (const CommError& e) {
        second = e.what();
      }
    });
    other.join();
    return sum_all(std::move(msgs));
  }, options());
  self = &master;
  CHECK(master.run_master(4) == 4);
  CHECK_THAT(second, Contains("run_master called while another run_master is in flight"));
}

TEST_CASE("Every participant of a round gets the same outcome when timeouts race the replies", "[comm][threads]") {
  // The callback takes about as long as the slaves' timeout, so that their
  // deadlines pass just before, during or just after the master hands out
  // the replies. A round must then succeed for everyone or fail for everyone.
  const int k = 8;
  const int rounds = 300;
  std::mt19937 rng(syncbn::testing::kSeed);
  std::uniform_int_distribution<int> jitter_us(-1500, 1500);
  int delay_us = 0;
  Master master([&delay_us](std::vector<std::pair<int, int>> msgs) {
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    return sum_all(std::move(msgs));
  }, options(6ms));
  auto pipes = register_slaves(master, k);
  int mixed = 0, failed = 0, succeeded = 0;
  for (int r = 0; r < rounds; ++r) {
    delay_us = 6000 + jitter_us(rng);
    const auto errors = one_round(master, pipes);
    int ok = 0;
    for (const auto& e : errors) ok += e == nullptr;
    if (ok == k) ++succeeded;
    else if (ok == 0) ++failed;
    else ++mixed;
    if (ok < k) master.reset();
  }
  CAPTURE(syncbn::testing::kSeed, succeeded, failed, mixed);
  CHECK(mixed == 0);
}

TEST_CASE("abort_for rejects a replica that is not in the rendezvous", "[comm]") {
  Master master(sum_all, options());
  auto pipes = register_slaves(master, 3);
  CHECK_THROWS_MATCHES(master.abort_for(99, "gone"), syncbn::InvalidArgument,
                       MessageIs("BN3: abort_for: replica 99 is not in this rendezvous, expected 0 (the master) or a "
                                 "registered slave id"));
  CHECK_FALSE(master.failed());
  check_round_succeeds(master, pipes);
  master.abort_for(2, "gone");
  CHECK(master.failed());
}

TEST_CASE("A negative timeout is rejected and the longest one waits without overflowing", "[comm]") {
  CHECK_THROWS_MATCHES(Master(sum_all, options(-1ms)), syncbn::InvalidArgument,
                       MessageIs("BN3: timeout is -1 ms, expected >= 0 (0 waits forever)"));
  Master master(sum_all, options(std::chrono::milliseconds::max()));
  auto pipes = register_slaves(master, 3);
  check_round_succeeds(master, pipes);
}
