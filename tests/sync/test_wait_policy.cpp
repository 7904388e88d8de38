// WaitPolicy: the spin phase is dropped when threads outnumber cores.

#include <catch2/catch.hpp>

#include <chrono>

#include "syncbn/sync/wait_policy.hpp"

using syncbn::sync::available_cores;
using syncbn::sync::WaitPolicy;
using namespace std::chrono_literals;

TEST_CASE("The process may run on at least one core", "[comm]") { CHECK(available_cores() >= 1); }

TEST_CASE("A rendezvous with more threads than cores waits without spinning", "[comm]") {
  const WaitPolicy policy{7us, 300us, true};
  const WaitPolicy crowded = policy.for_participants(available_cores() + 1);
  CHECK(crowded.spin == 0ns);
  CHECK(crowded.yield == 300us);
  const WaitPolicy roomy = policy.for_participants(available_cores());
  CHECK(roomy.spin == 7us);
  CHECK(roomy.yield == 300us);
}

TEST_CASE("A policy that does not adapt to cores keeps its spin phase", "[comm]") {
  const WaitPolicy fixed{7us, 300us, false};
  CHECK(fixed.for_participants(available_cores() + 5).spin == 7us);
}

TEST_CASE("A zero timeout means waiting forever", "[comm]") {
  CHECK(syncbn::sync::deadline_after(0ms) == syncbn::sync::Clock::time_point::max());
  CHECK(syncbn::sync::deadline_after(10ms) > syncbn::sync::Clock::now());
}
