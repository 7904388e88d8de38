// MPI process groups (syncbn/distributed/mpi.hpp), run under mpirun with 2, 3 and
// 4 processes: the collectives' results on every rank, subgroups, and the
// failures a rank causes by calling another collective, one too many, or
// none. Each case that can fail a group makes its own (new_group over all
// ranks), so that the world group stays usable for the next case.

#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "mpi_world.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/comm/process_group.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::kSeed;
using syncbn::testing::mpi_session;

namespace {

std::vector<int> all_ranks() {
  std::vector<int> ranks(static_cast<std::size_t>(mpi_session().world()->size()));
  std::iota(ranks.begin(), ranks.end(), 0);
  return ranks;
}

std::shared_ptr<comm::ProcessGroup> fresh_group() { return mpi_session().new_group(all_ranks(), 30s); }

template <class T>
std::vector<T> from_bytes(const std::vector<std::byte>& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

}  // namespace

TEST_CASE("The world group all-gathers, sums, broadcasts and meets at barriers on every rank", "[distributed][mpi]") {
  auto world = mpi_session().world();
  const int rank = world->rank(), size = world->size();
  CAPTURE(rank, size);
  REQUIRE(size >= 2);

  const std::int64_t mine[2] = {rank, 100 + 10 * rank};
  const auto gathered = from_bytes<std::int64_t>(world->all_gather(std::as_bytes(std::span(mine)), "gather", 30s));
  REQUIRE(gathered.size() == static_cast<std::size_t>(2 * size));
  for (int r = 0; r < size; ++r) {
    CHECK(gathered[static_cast<std::size_t>(2 * r)] == r);
    CHECK(gathered[static_cast<std::size_t>(2 * r + 1)] == 100 + 10 * r);
  }

  const double values[3] = {1.0, static_cast<double>(rank), 0.5 * rank};
  const auto sums = world->all_reduce_sum(values, "sum", 30s);
  const double ranks_total = size * (size - 1) / 2.0;
  CHECK(sums == std::vector<double>{static_cast<double>(size), ranks_total, 0.5 * ranks_total});

  for (int root = 0; root < size; ++root) {
    std::int64_t data[3] = {-1, -1, -1};
    if (rank == root) data[0] = 7, data[1] = root, data[2] = 9;
    world->broadcast(std::as_writable_bytes(std::span(data)), root, "broadcast", 30s);
    CHECK(data[0] == 7);
    CHECK(data[1] == root);
    CHECK(data[2] == 9);
  }
  const std::int64_t before = world->calls();
  world->barrier("barrier", 30s);
  CHECK(world->calls() == before + 1);
  // Empty payloads still meet.
  CHECK(world->all_gather({}, "empty gather", 30s).empty());
  CHECK(world->all_reduce_sum({}, "empty sum", 30s).empty());
}

TEST_CASE("Sums over the ranks are bit-identical on every rank", "[distributed][mpi]") {
  auto group = fresh_group();
  const int rank = group->rank();
  CAPTURE(kSeed, rank);
  std::mt19937_64 rng = syncbn::testing::make_rng(31, static_cast<std::uint64_t>(rank));
  std::normal_distribution<double> normal(0.0, 1e6);
  std::vector<double> values(257);
  for (double& v : values) v = normal(rng);
  const auto sums = group->all_reduce_sum(values, "sum", 30s);
  const auto everyone = group->all_gather(std::as_bytes(std::span(sums)), "compare", 30s);
  for (int r = 0; r < group->size(); ++r) {
    INFO("rank " << r << "'s sums against this rank's");
    CHECK(std::memcmp(everyone.data() + static_cast<std::size_t>(r) * sums.size() * sizeof(double), sums.data(),
                      sums.size() * sizeof(double)) == 0);
  }
}

TEST_CASE("Subgroups of pairs exchange within their pair only", "[distributed][mpi]") {
  auto world = mpi_session().world();
  const int rank = world->rank(), size = world->size();
  CAPTURE(rank, size);
  // Pairs {0, 1}, {2, 3}, ...; with an odd size the last rank is alone.
  std::shared_ptr<comm::ProcessGroup> mine;
  for (int first = 0; first < size; first += 2) {
    std::vector<int> ranks{first};
    if (first + 1 < size) ranks.push_back(first + 1);
    auto group = mpi_session().new_group(ranks, 30s);
    CHECK((group != nullptr) == (rank / 2 == first / 2));
    if (group) mine = group;
  }
  REQUIRE(mine != nullptr);
  const int first = rank - rank % 2;
  CHECK(mine->rank() == rank - first);
  CHECK(mine->size() == std::min(2, size - first));
  const double value = 1.0 + rank;
  const auto sum = mine->all_reduce_sum(std::span(&value, 1), "pair sum", 30s);
  double want = 1.0 + first;
  if (first + 1 < size) want += 2.0 + first;
  CHECK(sum[0] == want);
  CHECK_THAT(mine->describe(), Catch::Contains("MPI group of"));
}

TEST_CASE("A rank that makes another collective makes it fail on every rank, naming each call", "[distributed][mpi]") {
  auto group = fresh_group();
  const int rank = group->rank();
  CAPTURE(rank);
  const std::string call = rank == 1 ? "SyncBatchNorm2d 'layer2.bn' forward" : "SyncBatchNorm2d 'layer1.bn' forward";
  const double value = 1.0;
  try {
    if (rank == 1)
      group->barrier(call, 30s);
    else
      group->all_reduce_sum(std::span(&value, 1), call, 30s);
    FAIL("expected a CommError");
  } catch (const CommError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("make different collectives, expected the same on every rank"));
    CHECK_THAT(what, Catch::Contains("rank 1 in barrier 'SyncBatchNorm2d 'layer2.bn' forward' (call 0, 0 bytes)"));
    CHECK_THAT(what, Catch::Contains("in all_reduce_sum 'SyncBatchNorm2d 'layer1.bn' forward' (call 0, 8 bytes)"));
  }
  // The group is done for: every later collective is refused at once.
  CHECK_THROWS_MATCHES(group->barrier("next", 30s), CommError,
                       syncbn::testing::MessageContains("barrier 'next': MPI group of"));
  mpi_session().world()->barrier("after a mismatch", 30s);
}

TEST_CASE("A rank that makes one collective too many times out naming it; the others then see it a call ahead",
          "[distributed][mpi]") {
  auto group = fresh_group();
  auto world = mpi_session().world();
  const int rank = group->rank();
  CAPTURE(rank);
  group->barrier("step 1", 30s);
  if (rank == 0) {
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_MATCHES(group->barrier("step 2", 300ms), Timeout,
                         syncbn::testing::MessageContains("'step 2': not every rank of MPI group of"));
    CHECK(std::chrono::steady_clock::now() - start >= 300ms);
  }
  world->barrier("rank 0 timed out", 30s);
  if (rank != 0) {
    // Rank 0's header of "step 2" is still under way: the next collective of
    // the others completes it and finds rank 0 in another call.
    try {
      group->barrier("drain", 30s);
      FAIL("expected a CommError");
    } catch (const CommError& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains("rank 0 in barrier 'step 2' (call 1, 0 bytes)"));
    }
  }
  world->barrier("after the timeout", 30s);
}

TEST_CASE("Bad arguments are refused before any exchange, naming the entry point", "[distributed][mpi]") {
  auto world = mpi_session().world();
  const std::int64_t before = world->calls();
  std::byte data[4] = {};
  CHECK_THROWS_MATCHES(world->broadcast(data, world->size(), "b", 30s), InvalidArgument,
                       syncbn::testing::MessageIs("broadcast 'b': root " + std::to_string(world->size()) +
                                                  ", expected a rank of 0 to " + std::to_string(world->size() - 1)));
  CHECK_THROWS_MATCHES(world->barrier("b", -1ms), InvalidArgument,
                       syncbn::testing::MessageIs("barrier 'b': timeout -1 ms, expected >= 0 (0 waits forever)"));
  CHECK_THROWS_MATCHES(mpi_session().new_group({}, 30s), InvalidArgument,
                       syncbn::testing::MessageContains("MpiSession::new_group: no ranks, expected 1 to"));
  CHECK_THROWS_MATCHES(mpi_session().new_group({1, 0}, 30s), InvalidArgument,
                       syncbn::testing::MessageIs("MpiSession::new_group: rank 0 follows 1, expected increasing ranks "
                                                  "without duplicates"));
  CHECK_THROWS_MATCHES(mpi_session().new_group({0, 99}, 30s), InvalidArgument,
                       syncbn::testing::MessageIs("MpiSession::new_group: rank 99, expected a world rank of 0 to " +
                                                  std::to_string(world->size() - 1)));
  CHECK_THROWS_MATCHES(distributed::MpiSession(), InvalidArgument,
                       syncbn::testing::MessageIs("MpiSession: a session already exists in this process, expected one "
                                                  "at a time"));
  CHECK(world->calls() == before);
}

TEST_CASE("Processes that ask for different subgroups fail on every rank", "[distributed][mpi]") {
  const int rank = mpi_session().world()->rank();
  const std::vector<int> ranks = rank == 0 ? std::vector<int>{0} : std::vector<int>{0, 1};
  const std::string other = rank == 0 ? "1" : "0";
  CHECK_THROWS_MATCHES(mpi_session().new_group(ranks, 30s), CommError,
                       syncbn::testing::MessageIs(std::string("MpiSession::new_group {") + (rank == 0 ? "0" : "0, 1") +
                                                  "}: world rank " + other +
                                                  " asks for another group, expected every process to pass the same "
                                                  "ranks"));
  // The world group stays usable: the lists differed, not the collectives.
  mpi_session().world()->barrier("after different subgroups", 30s);
}
