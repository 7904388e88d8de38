// Whereabouts (Note [Where the replicas wait]): a timeout names every
// replica's rendezvous when they are not all in the same one.

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

#include "support/threads.hpp"
#include "syncbn/error.hpp"
#include "syncbn/sync/sync_master.hpp"
#include "syncbn/sync/whereabouts.hpp"

using syncbn::sync::Whereabouts;
using syncbn::sync::WhereaboutsGuard;
using namespace std::chrono_literals;

TEST_CASE("Whereabouts say nothing while every replica is in the same rendezvous and round", "[sync]") {
  Whereabouts where(3);
  CHECK(where.disagreement().empty());  // all in none
  where.enter(0, "a forward", 1);
  where.enter(1, "a forward", 1);
  where.enter(2, "a forward", 1);
  CHECK(where.disagreement().empty());
}

TEST_CASE("Whereabouts name each replica's rendezvous and round when they differ", "[sync]") {
  Whereabouts where(3);
  where.enter(0, "a forward", 1);
  where.enter(1, "b forward", 1);
  CHECK(where.disagreement() == "; where the replicas are: replica 0 waits in 'a forward' round 1, replica 1 waits in "
                                "'b forward' round 1, replica 2 is in no rendezvous");
  where.enter(2, "a forward", 2);
  where.leave(1);
  CHECK(where.disagreement() == "; where the replicas are: replica 0 waits in 'a forward' round 1, replica 1 is in no "
                                "rendezvous, replica 2 waits in 'a forward' round 2");
  {
    const WhereaboutsGuard guard(&where, 1, "a forward", 1);
    where.enter(2, "a forward", 1);
    CHECK(where.disagreement().empty());
  }
  CHECK_FALSE(where.disagreement().empty());  // the guard left
}

TEST_CASE("A replica that leaves its rendezvous on an error stays named there, as failed, until reset",
          "[sync]") {
  Whereabouts where(2);
  where.enter(1, "a forward", 1);
  try {
    const WhereaboutsGuard guard(&where, 0, "b forward", 1);
    throw std::runtime_error("timed out");
  } catch (const std::runtime_error&) {
  }
  CHECK(where.disagreement() == "; where the replicas are: replica 0 failed in 'b forward' round 1, replica 1 waits in "
                                "'a forward' round 1");
  where.enter(0, "a forward", 1);  // a new entry replaces the failed note
  CHECK(where.disagreement().empty());
  {
    // A rendezvous entered and left normally while another exception
    // unwinds (from a destructor) is left normally, not as failed.
    struct EntersWhileUnwinding {
      Whereabouts& where;
      ~EntersWhileUnwinding() { const WhereaboutsGuard guard(&where, 0, "c forward", 2); }
    };
    try {
      const EntersWhileUnwinding enters{where};
      throw std::runtime_error("outer");
    } catch (const std::runtime_error&) {
    }
  }
  CHECK(where.disagreement() == "; where the replicas are: replica 0 is in no rendezvous, replica 1 waits in "
                                "'a forward' round 1");
  where.leave_on_failure(1);
  where.clear();
  CHECK(where.disagreement().empty());  // all in none
}

TEST_CASE("A rendezvous timeout says where the replicas of its group wait", "[sync][threads]") {
  // Two rendezvous of one group: replica 0 waits in 'a' for replica 1, which
  // waits in 'b' for replica 0. 'a' times out first; replica 0 then releases
  // 'b' (as DataParallel's abort would).
  auto where = std::make_shared<Whereabouts>(2);
  using Master = syncbn::sync::SyncMaster<int, int>;
  const auto echo = [](std::vector<std::pair<int, int>> m) { return m; };
  Master a(echo, {"a forward", 100ms, {}, where});
  Master b(echo, {"b forward", 60s, {}, where});
  auto pipe_a = a.register_slave(1);
  auto pipe_b = b.register_slave(1);
  const auto results = syncbn::testing::run_in_threads(2, [&](int k) -> std::string {
    if (k == 1) return std::to_string(pipe_b.run_slave(1));
    try {
      return std::to_string(a.run_master(0));
    } catch (const syncbn::Timeout& e) {
      b.abort_for(0, "released");
      return e.what();
    }
  });
  CHECK(results[0] == "a forward: round 1 timed out after 100 ms on replica 0, still waiting for replica(s) [1]; where "
                      "the replicas are: replica 0 waits in 'a forward' round 1, replica 1 waits in 'b forward' round 1");
  CHECK_THAT(results[1], Catch::Matchers::Contains("released"));
}
