// comm::ProcessGroup's own logic (the header check, the failure state, the
// rank-order sums, argument errors) on the in-process engine whose ranks are
// threads (support/thread_group.hpp).

#include <catch2/catch.hpp>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include "support/matchers.hpp"
#include "support/thread_group.hpp"
#include "syncbn/comm/process_group.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::MessageIs;

using syncbn::testing::run_ranks;
using syncbn::testing::ThreadGroup;
using syncbn::testing::Hub;


TEST_CASE("A process group gathers, sums in rank order, broadcasts and meets, on every rank",
          "[comm][group][threads]") {
  const int size = GENERATE(1, 2, 3, 4);
  CAPTURE(size);
  std::mutex results_mutex;
  std::vector<std::vector<double>> sums(static_cast<std::size_t>(size));
  const auto errors = run_ranks(size, [&](comm::ProcessGroup& g) {
    const std::int32_t mine[2] = {g.rank(), -g.rank()};
    const auto gathered = g.all_gather(std::as_bytes(std::span(mine)), "gather", 5s);
    for (int r = 0; r < g.size(); ++r) {
      std::int32_t got[2];
      std::memcpy(got, gathered.data() + static_cast<std::size_t>(r) * sizeof(got), sizeof(got));
      if (got[0] != r || got[1] != -r) SYNCBN_THROW(Error, "gather: rank ", r, "'s values are wrong");
    }
    // 1e16 + 1 - 1e16 ... depends on the order: rank order makes it the same everywhere.
    const double values[2] = {g.rank() == 0 ? 1e16 : 1.0, 0.25 * g.rank()};
    const auto s = g.all_reduce_sum(values, "sum", 5s);
    std::int64_t root_value[1] = {g.rank() == g.size() - 1 ? 42 : 0};
    g.broadcast(std::as_writable_bytes(std::span(root_value)), g.size() - 1, "broadcast", 5s);
    if (root_value[0] != 42) SYNCBN_THROW(Error, "broadcast: got ", root_value[0]);
    g.barrier("barrier", 5s);
    if (g.calls() != 4) SYNCBN_THROW(Error, "calls: ", g.calls());
    std::lock_guard<std::mutex> lock(results_mutex);
    sums[static_cast<std::size_t>(g.rank())] = s;
  });
  for (const auto& e : errors) CHECK(e.empty());
  double want0 = 1e16, want1 = 0.0;
  for (int r = 1; r < size; ++r) want0 += 1.0, want1 += 0.25 * r;
  for (const auto& s : sums) CHECK(s == std::vector<double>{want0, want1});
}

TEST_CASE("Collectives into the caller's buffers give what the returning ones give, a sum in place too",
          "[comm][group][threads]") {
  const int size = GENERATE(1, 2, 3);
  CAPTURE(size);
  const auto errors = run_ranks(size, [&](comm::ProcessGroup& g) {
    // Three rounds of different sizes: a buffer kept from a larger call
    // must not leak its values into a smaller one, nor a smaller into a larger.
    for (const std::size_t n : {std::size_t{5}, std::size_t{2}, std::size_t{9}}) {
      std::vector<double> values(n);
      for (std::size_t i = 0; i < n; ++i) values[i] = g.rank() == 0 && i == 0 ? 1e16 : 0.5 * g.rank() + 0.125 * i;
      const std::vector<double> want = g.all_reduce_sum(values, "sum returned", 5s);
      std::vector<double> into(n, -1.0);
      g.all_reduce_sum(values, into, "sum into", 5s);
      if (into != want) SYNCBN_THROW(Error, "all_reduce_sum into a buffer differs (", n, " values)");
      g.all_reduce_sum(values, values, "sum in place", 5s);
      if (values != want) SYNCBN_THROW(Error, "all_reduce_sum in place differs (", n, " values)");

      std::vector<std::byte> mine(n * 3);
      for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = static_cast<std::byte>(g.rank() * 31 + static_cast<int>(i));
      const std::vector<std::byte> gathered = g.all_gather(mine, "gather returned", 5s);
      std::vector<std::byte> out(mine.size() * static_cast<std::size_t>(g.size()), std::byte{0xee});
      g.all_gather(mine, out, "gather into", 5s);
      if (out != gathered) SYNCBN_THROW(Error, "all_gather into a buffer differs (", n, " values)");
    }
  });
  for (const auto& e : errors) CHECK(e.empty());
}

TEST_CASE("A rank in another collective fails it on every rank with each rank's call; the group is then refused",
          "[comm][group][threads]") {
  const auto errors = run_ranks(3, [&](comm::ProcessGroup& g) {
    if (g.rank() == 2) {
      const double v = 1.0;
      g.all_reduce_sum(std::span(&v, 1), "bn2 forward", 5s);
    } else {
      g.barrier("bn1 forward", 5s);
    }
  });
  for (const auto& e : errors) {
    CHECK_THAT(e, Catch::Contains("make different collectives, expected the same on every rank: ranks 0-1 in barrier "
                                  "'bn1 forward' (call 0, 0 bytes); rank 2 in all_reduce_sum 'bn2 forward' (call 0, 8 "
                                  "bytes)"));
    CHECK_THAT(e, Catch::Contains("CommError"));
  }
  // A group that failed refuses the next collective at once, naming the first failure.
  const auto refused = run_ranks(2, [&](comm::ProcessGroup& g) {
    try {
      g.barrier(g.rank() == 0 ? "a" : "b", 5s);
    } catch (const CommError&) {
    }
    g.barrier("next", 5s);
  });
  for (const auto& e : refused)
    CHECK_THAT(e, Catch::Contains("barrier 'next': thread group of 2 ranks failed earlier, expected a working group"));
}

TEST_CASE("Different sizes, roots or sequence numbers are told apart before any data moves", "[comm][group][threads]") {
  const auto sizes = run_ranks(2, [&](comm::ProcessGroup& g) {
    std::vector<std::byte> data(g.rank() == 0 ? 8 : 16);
    g.all_gather(data, "gather", 5s);
  });
  for (const auto& e : sizes) CHECK_THAT(e, Catch::Contains("rank 0 in all_gather 'gather' (call 0, 8 bytes); rank 1 in "
                                                            "all_gather 'gather' (call 0, 16 bytes)"));
  const auto roots = run_ranks(2, [&](comm::ProcessGroup& g) {
    std::byte data[4] = {};
    g.broadcast(data, g.rank(), "bcast", 5s);
  });
  for (const auto& e : roots) CHECK_THAT(e, Catch::Contains("(call 0, 4 bytes, root 0); rank 1 in broadcast 'bcast' "
                                                            "(call 0, 4 bytes, root 1)"));
  // A long call name is cut in the header, and the message says so.
  const std::string long_name(150, 'x');
  const auto cut = run_ranks(2, [&](comm::ProcessGroup& g) { g.barrier(g.rank() == 0 ? long_name : "y", 5s); });
  CHECK_THAT(cut[1], Catch::Contains("rank 0 in barrier '" + std::string(100, 'x') + "...'"));
}

TEST_CASE("A rank that never arrives makes the others time out naming the call", "[comm][group][threads]") {
  const auto start = std::chrono::steady_clock::now();
  const auto errors = run_ranks(3, [&](comm::ProcessGroup& g) {
    if (g.rank() != 1) g.barrier("SyncBatchNorm1d 'bn' forward", 200ms);
  });
  CHECK(std::chrono::steady_clock::now() - start >= 200ms);
  CHECK(errors[1].empty());
  for (int r : {0, 2})
    CHECK_THAT(errors[static_cast<std::size_t>(r)],
               Catch::Contains("Timeout") && Catch::Contains("'SyncBatchNorm1d 'bn' forward': not every thread rank "
                                                             "arrived within 200 ms"));
}

TEST_CASE("Bad arguments are refused before any exchange, naming the entry point", "[comm][group]") {
  auto hub = std::make_shared<Hub>(1);
  ThreadGroup g(hub, 0, 1);  // one rank: its exchanges need no other thread
  std::byte data[2] = {};
  CHECK_THROWS_MATCHES(g.broadcast(data, 1, "b", 1s), InvalidArgument,
                       MessageIs("broadcast 'b': root 1, expected a rank of 0 to 0"));
  CHECK_THROWS_MATCHES(g.broadcast(data, -1, "b", 1s), InvalidArgument,
                       MessageIs("broadcast 'b': root -1, expected a rank of 0 to 0"));
  CHECK_THROWS_MATCHES(g.all_gather(data, "g", -5ms), InvalidArgument,
                       MessageIs("all_gather 'g': timeout -5 ms, expected >= 0 (0 waits forever)"));
  std::vector<std::byte> out(3);
  CHECK_THROWS_MATCHES(g.all_gather(data, out, "g", 1s), InvalidArgument,
                       MessageIs("all_gather 'g': out holds 3 bytes, expected 2 (1 ranks x 2)"));
  const double values[2] = {1.0, 2.0};
  double sums[1] = {};
  CHECK_THROWS_MATCHES(g.all_reduce_sum(values, sums, "s", 1s), InvalidArgument,
                       MessageIs("all_reduce_sum 's': sums holds 1 values, expected 2 (one per value)"));
  CHECK(g.calls() == 0);
  // Nothing failed: the group still works.
  g.barrier("still usable", 1s);
  CHECK(g.calls() == 1);
  CHECK_THROWS_MATCHES(ThreadGroup(hub, 2, 2), InvalidArgument, MessageIs("ProcessGroup: rank 2, expected 0 to 1"));
  CHECK_THROWS_MATCHES(ThreadGroup(hub, 0, 0), InvalidArgument, MessageIs("ProcessGroup: size 0, expected >= 1"));
}
