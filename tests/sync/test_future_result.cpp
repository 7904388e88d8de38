// Unit tests of syncbn::sync::FutureResult.

#include <catch2/catch.hpp>

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/matchers.hpp"
#include "syncbn/sync/future_result.hpp"

using syncbn::CommError;
using syncbn::Timeout;
using syncbn::sync::FutureResult;
using syncbn::sync::WaitPolicy;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using namespace std::chrono_literals;

namespace {

WaitPolicy policy_named(const std::string& name) {
  return name == "blocking" ? WaitPolicy::blocking() : WaitPolicy{};
}

}  // namespace

TEST_CASE("A FutureResult hands values from a producer thread to a consumer thread round after round",
          "[comm][threads]") {
  const std::string policy = GENERATE(as<std::string>{}, "adaptive", "blocking");
  CAPTURE(policy);
  FutureResult<int> to_consumer(policy_named(policy));
  FutureResult<int> to_producer(policy_named(policy));
  constexpr int kRounds = 2000;

  std::thread producer([&] {
    for (int i = 0; i < kRounds; ++i) {
      to_consumer.put(i);
      // The echo keeps at most one value in flight, as SyncMaster does.
      REQUIRE(to_producer.get() == i * 2);
    }
  });
  std::vector<int> seen;
  for (int i = 0; i < kRounds; ++i) {
    const int v = to_consumer.get();
    seen.push_back(v);
    to_producer.put(v * 2);
  }
  producer.join();
  for (int i = 0; i < kRounds; ++i) REQUIRE(seen[i] == i);
  CHECK_FALSE(to_consumer.ready());
}

TEST_CASE("Putting while a value is pending throws CommError and keeps the pending value", "[comm]") {
  FutureResult<std::string> future;
  future.put("first");
  CHECK_THROWS_MATCHES(future.put("second"), CommError,
                       MessageContains("a value is already pending"));
  CHECK(future.ready());
  CHECK(future.get() == "first");
  future.put("third");
  CHECK(future.get() == "third");
}

TEST_CASE("get_for throws Timeout when no value arrives", "[comm]") {
  FutureResult<int> future;
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(future.get_for(20ms), Timeout);
  CHECK(std::chrono::steady_clock::now() - start >= 20ms);
}

TEST_CASE("A failure wakes a blocked consumer and is rethrown until reset", "[comm][threads]") {
  const std::string policy = GENERATE(as<std::string>{}, "adaptive", "blocking");
  CAPTURE(policy);
  FutureResult<int> future(policy_named(policy));
  std::thread failer([&] {
    std::this_thread::sleep_for(5ms);
    future.fail(std::make_exception_ptr(std::runtime_error("peer died")));
  });
  CHECK_THROWS_WITH(future.get(), "peer died");
  failer.join();
  CHECK(future.failed());
  CHECK_THROWS_WITH(future.get_for(1ms), "peer died");

  future.reset();
  CHECK_FALSE(future.failed());
  future.put(7);
  CHECK(future.get() == 7);
}

TEST_CASE("A value already pending wins over a later failure", "[comm]") {
  FutureResult<int> future;
  future.put(42);
  future.fail(std::make_exception_ptr(std::runtime_error("late failure")));
  CHECK(future.get() == 42);
  CHECK_THROWS_WITH(future.get(), "late failure");
}

TEST_CASE("The first failure of a FutureResult wins", "[comm]") {
  FutureResult<int> future;
  future.fail(std::make_exception_ptr(std::runtime_error("first")));
  future.fail(std::make_exception_ptr(std::runtime_error("second")));
  CHECK_THROWS_WITH(future.get(), "first");
}

TEST_CASE("Taking from an empty FutureResult is a CommError, not undefined behaviour", "[comm]") {
  FutureResult<int> future;
  CHECK_THROWS_MATCHES(future.take(), CommError, MessageContains("nothing to take"));
}

TEST_CASE("Timeouts too long for the clock wait forever instead of overflowing", "[comm]") {
  FutureResult<int> f;
  f.put(7);
  CHECK(f.get_for(std::chrono::nanoseconds::max()) == 7);  // not a Timeout from an overflowed deadline
  CHECK(syncbn::sync::deadline_after(std::chrono::milliseconds::max()) == syncbn::sync::Clock::time_point::max());
  CHECK(syncbn::sync::deadline_after(std::chrono::hours::max()) == syncbn::sync::Clock::time_point::max());
  CHECK(syncbn::sync::deadline_after(std::chrono::milliseconds(-5)) == syncbn::sync::Clock::time_point::max());
  const auto soon = syncbn::sync::deadline_after(std::chrono::milliseconds(50));
  CHECK(soon > syncbn::sync::Clock::now());
  CHECK(soon < syncbn::sync::Clock::now() + std::chrono::seconds(10));
}
