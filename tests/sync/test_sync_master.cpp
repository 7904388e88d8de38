// SyncMaster / SlavePipe: threaded reductions, ordering and registration.

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/seeds.hpp"
#include "support/threads.hpp"
#include "support/matchers.hpp"
#include "syncbn/sync/sync_master.hpp"

using syncbn::CommError;
using syncbn::InvalidArgument;
using syncbn::sync::SlavePipe;
using syncbn::sync::SyncMaster;
using syncbn::sync::SyncOptions;
using syncbn::testing::make_rng;
using syncbn::testing::run_in_threads;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using namespace std::chrono_literals;

namespace {

// The per-channel partial statistics a batch-norm replica sends.
struct Stats {
  std::vector<double> sum;
  std::vector<double> ssum;
  std::int64_t count = 0;
};

// What the master sends back: the reduced statistics and the id it was meant
// for, so that a reply delivered to the wrong replica is detected.
struct Reduced {
  Stats total;
  int for_id = -1;
};

std::size_t channels_of_round(std::uint64_t round) {
  auto rng = make_rng(round, 0xC4A77E15);
  return 1 + rng() % 17;
}

// Replica `id`'s payload in `round`: every thread can rebuild anyone's.
Stats payload(std::uint64_t round, int id) {
  auto rng = make_rng(round, static_cast<std::uint64_t>(id) + 1);
  std::normal_distribution<double> normal(3.0, 2.0);
  Stats s;
  const std::size_t c = channels_of_round(round);
  for (std::size_t i = 0; i < c; ++i) {
    const double x = normal(rng);
    s.sum.push_back(x * 17.0);
    s.ssum.push_back(x * x * 17.0);
  }
  s.count = static_cast<std::int64_t>(rng() % 100);
  return s;
}

// The reduction, always in increasing id order so that it is bit-exact.
Stats reduce_in_id_order(const std::vector<Stats>& parts) {
  Stats total = parts.front();
  for (std::size_t p = 1; p < parts.size(); ++p) {
    for (std::size_t i = 0; i < total.sum.size(); ++i) {
      total.sum[i] += parts[p].sum[i];
      total.ssum[i] += parts[p].ssum[i];
    }
    total.count += parts[p].count;
  }
  return total;
}

// Shuffles arrival order: some replicas yield or sleep a little in some rounds.
void jitter(std::uint64_t round, int id) {
  auto rng = make_rng(round, static_cast<std::uint64_t>(id), 0x5EED);
  const auto r = rng() % 16;
  if (r == 0) std::this_thread::sleep_for(20us);
  else if (r < 4) std::this_thread::yield();
}

std::string mismatch(const char* what, std::uint64_t round, int id) {
  return std::string(what) + " wrong in round " + std::to_string(round) + " on replica " + std::to_string(id);
}

// Replies with the sum of all messages to every participant.
std::vector<std::pair<int, int>> sum_to_everyone(std::vector<std::pair<int, int>> msgs) {
  int total = 0;
  for (const auto& m : msgs) total += m.second;
  std::vector<std::pair<int, int>> replies;
  for (const auto& m : msgs) replies.emplace_back(m.first, total);
  return replies;
}

// Every replica's payload of every round and the expected totals, computed
// once up front so that the threads only exchange and compare.
struct Script {
  std::vector<std::vector<Stats>> payloads;  // [round][id]
  std::vector<Stats> totals;                 // [round]
};

Script make_script(int k, std::uint64_t rounds) {
  Script s;
  for (std::uint64_t round = 0; round < rounds; ++round) {
    std::vector<Stats> parts;
    for (int id = 0; id < k; ++id) parts.push_back(payload(round, id));
    s.totals.push_back(reduce_in_id_order(parts));
    s.payloads.push_back(std::move(parts));
  }
  return s;
}

}  // namespace

TEST_CASE("K threads reduce and broadcast sum/ssum/count structs exactly for 1000 back-to-back rounds",
          "[comm][threads]") {
  const int k = GENERATE(1, 2, 3, 4, 8, 16);
  CAPTURE(k, syncbn::testing::kSeed);
  constexpr std::uint64_t kRounds = 1000;
  const Script script = make_script(k, kRounds);

  using Master = SyncMaster<Stats, Reduced>;
  std::vector<int> callback_ids_wrong;
  Master master([&](std::vector<std::pair<int, Stats>> msgs) {
    std::vector<Stats> parts;
    for (std::size_t i = 0; i < msgs.size(); ++i) {
      if (msgs[i].first != static_cast<int>(i)) callback_ids_wrong.push_back(msgs[i].first);
      parts.push_back(std::move(msgs[i].second));
    }
    const Stats total = reduce_in_id_order(parts);
    std::vector<std::pair<int, Reduced>> replies;
    for (const auto& m : msgs) replies.emplace_back(m.first, Reduced{total, m.first});
    return replies;
  });
  std::vector<Master::Pipe> pipes;
  for (int id = 1; id < k; ++id) pipes.push_back(master.register_slave(id));
  REQUIRE(master.nr_slaves() == k - 1);

  const auto results = run_in_threads(k, [&](int id) -> std::string {
    for (std::uint64_t round = 0; round < kRounds; ++round) {
      jitter(round, id);
      Stats mine = script.payloads[round][static_cast<std::size_t>(id)];
      const Reduced got = id == 0 ? master.run_master(std::move(mine))
                                  : pipes[static_cast<std::size_t>(id - 1)].run_slave(std::move(mine));
      const Stats& want = script.totals[round];
      if (got.for_id != id) return mismatch("reply routing", round, id);
      if (got.total.sum != want.sum) return mismatch("sum", round, id);
      if (got.total.ssum != want.ssum) return mismatch("ssum", round, id);
      if (got.total.count != want.count) return mismatch("count", round, id);
    }
    return "";
  });
  for (int id = 0; id < k; ++id) {
    INFO("replica " << id << ": " << results[static_cast<std::size_t>(id)]);
    CHECK(results[static_cast<std::size_t>(id)].empty());
  }
  CHECK(callback_ids_wrong.empty());
}

TEST_CASE("K threads reduce and broadcast random vectors of doubles exactly for 1000 rounds", "[comm][threads]") {
  const int k = GENERATE(1, 2, 3, 4, 8, 16);
  CAPTURE(k, syncbn::testing::kSeed);
  constexpr std::uint64_t kRounds = 1000;
  using Vec = std::vector<double>;
  const Script script = make_script(k, kRounds);

  SyncMaster<Vec, Vec> master([](std::vector<std::pair<int, Vec>> msgs) {
    Vec total = msgs.front().second;
    for (std::size_t p = 1; p < msgs.size(); ++p)
      for (std::size_t i = 0; i < total.size(); ++i) total[i] += msgs[p].second[i];
    std::vector<std::pair<int, Vec>> replies;
    for (const auto& m : msgs) replies.emplace_back(m.first, total);
    return replies;
  });
  std::vector<SlavePipe<Vec, Vec>> pipes;
  for (int id = 1; id < k; ++id) pipes.push_back(master.register_slave(id));

  const auto results = run_in_threads(k, [&](int id) -> std::string {
    for (std::uint64_t round = 0; round < kRounds; ++round) {
      Vec mine = script.payloads[round][static_cast<std::size_t>(id)].sum;
      const Vec got = id == 0 ? master.run_master(mine) : pipes[static_cast<std::size_t>(id - 1)].run_slave(mine);
      if (got != script.totals[round].sum) return mismatch("vector sum", round, id);
    }
    return "";
  });
  for (const auto& r : results) {
    INFO(r);
    CHECK(r.empty());
  }
}

TEST_CASE("The callback sees messages in increasing id order whatever the registration and arrival order",
          "[comm][threads]") {
  const std::vector<int> ids{7, 3, 5};  // registered out of order, not contiguous
  std::vector<std::vector<int>> seen;
  SyncMaster<int, int> master([&](std::vector<std::pair<int, int>> msgs) {
    std::vector<int> order;
    std::vector<std::pair<int, int>> replies;
    for (const auto& [id, v] : msgs) {
      order.push_back(id);
      replies.emplace_back(id, v * 10);
    }
    seen.push_back(order);
    return replies;
  });
  std::vector<SlavePipe<int, int>> pipes;
  for (int id : ids) pipes.push_back(master.register_slave(id));

  constexpr int kRounds = 50;
  const auto results = run_in_threads(4, [&](int t) -> std::string {
    for (int round = 0; round < kRounds; ++round) {
      // Later-registered slaves arrive first in odd rounds.
      if ((round % 2 == 1) == (t < 2)) std::this_thread::sleep_for(50us);
      const int id = t == 0 ? 0 : ids[static_cast<std::size_t>(t - 1)];
      const int got = t == 0 ? master.run_master(id + round) : pipes[static_cast<std::size_t>(t - 1)].run_slave(id + round);
      if (got != (id + round) * 10) return mismatch("reply", static_cast<std::uint64_t>(round), id);
    }
    return "";
  });
  for (const auto& r : results) CHECK(r.empty());
  REQUIRE(seen.size() == kRounds);
  for (const auto& order : seen) CHECK(order == std::vector<int>{0, 3, 5, 7});
}

TEST_CASE("Replies returned in another order still reach their own slave", "[comm][threads]") {
  SyncMaster<int, int> master([](std::vector<std::pair<int, int>> msgs) {
    std::vector<std::pair<int, int>> replies{{0, msgs[0].second + 1000}};
    for (auto it = msgs.rbegin(); it + 1 != msgs.rend(); ++it) replies.emplace_back(it->first, it->second + 1000);
    return replies;
  });
  std::vector<SlavePipe<int, int>> pipes;
  for (int id = 1; id <= 3; ++id) pipes.push_back(master.register_slave(id));
  const auto results = run_in_threads(4, [&](int id) -> std::string {
    for (int round = 0; round < 20; ++round) {
      const int got = id == 0 ? master.run_master(id) : pipes[static_cast<std::size_t>(id - 1)].run_slave(id);
      if (got != id + 1000) return mismatch("reply", static_cast<std::uint64_t>(round), id);
    }
    return "";
  });
  for (const auto& r : results) CHECK(r.empty());
}

TEST_CASE("Registering after a round has run starts a fresh registration with a different K", "[comm][threads]") {
  SyncMaster<int, int> master(sum_to_everyone);
  auto run_rounds = [&](std::vector<SlavePipe<int, int>>& pipes, int rounds) {
    const int k = static_cast<int>(pipes.size()) + 1;
    return run_in_threads(k, [&](int id) -> std::string {
      for (int round = 0; round < rounds; ++round) {
        const int got = id == 0 ? master.run_master(round) : pipes[static_cast<std::size_t>(id - 1)].run_slave(round);
        if (got != round * k) return mismatch("sum", static_cast<std::uint64_t>(round), id);
      }
      return "";
    });
  };

  std::vector<SlavePipe<int, int>> four;
  for (int id = 1; id <= 3; ++id) four.push_back(master.register_slave(id));
  for (const auto& r : run_rounds(four, 100)) CHECK(r.empty());

  std::vector<SlavePipe<int, int>> two;
  two.push_back(master.register_slave(2));
  CHECK(master.nr_slaves() == 1);
  for (const auto& r : run_rounds(two, 100)) CHECK(r.empty());

  // Pipes of the replaced registration fail at once instead of hanging.
  CHECK_THROWS_MATCHES(four[0].run_slave(1), CommError, MessageContains("replaced"));

  std::vector<SlavePipe<int, int>> eight;
  for (int id = 1; id <= 7; ++id) eight.push_back(master.register_slave(id));
  CHECK(master.nr_slaves() == 7);
  for (const auto& r : run_rounds(eight, 100)) CHECK(r.empty());
}

TEST_CASE("Bad slave ids are rejected without changing the registration", "[comm][threads]") {
  SyncMaster<int, int> master([](std::vector<std::pair<int, int>> msgs) {
    std::vector<std::pair<int, int>> replies;
    for (const auto& m : msgs) replies.emplace_back(m.first, m.second);
    return replies;
  }, SyncOptions{"BN7", 1000ms, {}});
  auto pipe = master.register_slave(1);
  CHECK_THROWS_MATCHES(master.register_slave(0), InvalidArgument,
                       MessageIs("BN7: register_slave: slave id is 0, expected >= 1 (0 is the master)"));
  CHECK_THROWS_AS(master.register_slave(-3), InvalidArgument);
  CHECK_THROWS_MATCHES(master.register_slave(1), InvalidArgument,
                       MessageContains("slave id 1 is already registered"));
  CHECK(master.nr_slaves() == 1);
  const auto results = run_in_threads(2, [&](int id) -> std::string {
    const int got = id == 0 ? master.run_master(5) : pipe.run_slave(6);
    return got == 5 + id ? "" : "wrong reply";
  });
  for (const auto& r : results) CHECK(r.empty());
}

TEST_CASE("An empty callback is rejected", "[comm][threads]") {
  CHECK_THROWS_AS((SyncMaster<int, int>(nullptr)), InvalidArgument);
}

TEST_CASE("An unregistered pipe refuses to run", "[comm][threads]") {
  SlavePipe<int, int> pipe;
  CHECK_FALSE(static_cast<bool>(pipe));
  CHECK_THROWS_MATCHES(pipe.run_slave(1), CommError, MessageContains("not registered"));
}

TEST_CASE("Eight threads run 100k back-to-back rounds", "[comm][.stress][threads]") {
  SyncMaster<int, int> master(sum_to_everyone);
  std::vector<SlavePipe<int, int>> pipes;
  for (int id = 1; id < 8; ++id) pipes.push_back(master.register_slave(id));
  const auto results = run_in_threads(8, [&](int id) -> std::string {
    for (int round = 0; round < 100000; ++round) {
      const int v = (round + id) % 1000;
      const int got = id == 0 ? master.run_master(v) : pipes[static_cast<std::size_t>(id - 1)].run_slave(v);
      int want = 0;
      for (int p = 0; p < 8; ++p) want += (round + p) % 1000;
      if (got != want) return mismatch("sum", static_cast<std::uint64_t>(round), id);
    }
    return "";
  });
  for (const auto& r : results) CHECK(r.empty());
}
