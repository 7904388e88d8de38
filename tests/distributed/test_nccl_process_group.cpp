// NCCL process groups (syncbn/distributed/nccl.hpp), bootstrapped through the MPI
// world: with one GPU per rank, the collectives' results on every rank and
// a hierarchical SyncBatchNorm exchange over NCCL; everywhere, the argument
// errors. Without NCCL or without a GPU per rank the GPU cases report
// skipped (NCCL refuses two ranks on one GPU).

#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "mpi_world.hpp"
#include "support/matchers.hpp"
#include "support/skip.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/distributed/nccl.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::MessageIs;
using syncbn::testing::mpi_session;

TEST_CASE("An NCCL group needs a CUDA device that this machine has", "[distributed][nccl]") {
  auto world = mpi_session().world();
  if (!distributed::has_nccl()) {
    CHECK_THROWS_MATCHES(distributed::nccl_group(*world, Device::cuda(0)), Unsupported,
                         MessageIs("nccl_group: this build of syncbn has no NCCL, expected one (build where nvcc and "
                                   "NCCL are found, SYNCBN_CUDA=ON)"));
    return;
  }
  const std::int64_t before = world->calls();
  CHECK_THROWS_MATCHES(distributed::nccl_group(*world, Device::cpu(0)), InvalidArgument,
                       MessageIs("nccl_group: device cpu:0, expected a CUDA device (one per rank)"));
  const int devices = cuda::device_count();
  CHECK_THROWS_MATCHES(distributed::nccl_group(*world, Device::cuda(devices)), InvalidArgument,
                       MessageIs("nccl_group: device cuda:" + std::to_string(devices) + ", expected one of this "
                                 "machine's " + std::to_string(devices) + " CUDA device(s)"));
  CHECK(world->calls() == before);  // refused before the bootstrap's broadcast
}

TEST_CASE("An NCCL group all-gathers, sums and broadcasts on one GPU per rank", "[distributed][nccl]") {
  auto world = mpi_session().world();
  const int rank = world->rank(), size = world->size();
  if (!distributed::has_nccl()) SYNCBN_SKIP("this build has no NCCL");
  if (cuda::device_count() < size)
    SYNCBN_SKIP("NCCL needs a GPU per rank: " + std::to_string(cuda::device_count()) + " GPU(s) for " +
                std::to_string(size) + " ranks");
  auto group = distributed::nccl_group(*world, Device::cuda(rank), 60s);
  REQUIRE(group->size() == size);
  CHECK(group->rank() == rank);
  const std::int32_t mine[2] = {rank, 10 * rank};
  const auto gathered = group->all_gather(std::as_bytes(std::span(mine)), "gather", 60s);
  for (int r = 0; r < size; ++r) {
    std::int32_t got[2];
    std::memcpy(got, gathered.data() + static_cast<std::size_t>(r) * sizeof(got), sizeof(got));
    CHECK(got[0] == r);
    CHECK(got[1] == 10 * r);
  }
  const double value = 1.0 + rank;
  CHECK(group->all_reduce_sum(std::span(&value, 1), "sum", 60s)[0] == size * (size + 1) / 2.0);
  std::int64_t data = rank == size - 1 ? 77 : 0;
  group->broadcast(std::as_writable_bytes(std::span(&data, 1)), size - 1, "broadcast", 60s);
  CHECK(data == 77);
}
