// syncbn::libtorch::DistributedDataParallel under mpirun (2 and 3
// processes) x 1 or 2 replicas: each process holds an uneven part of every
// global batch of 13 (one part empty from 3 processes on); after 3 SGD
// steps every rank's torch ResNet must equal the same network trained on
// the whole batch in one thread (float64), its running statistics included;
// and a layer that does not synchronize over the group is refused by name.

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>


#include "mpi_world.hpp"
#include "support/seeds.hpp"
#include "support/torch_catch.hpp"
#include "syncbn/error.hpp"
#include "syncbn/libtorch/distributed_data_parallel.hpp"
#include "syncbn/libtorch/sync_batch_norm.hpp"

namespace lt = syncbn::libtorch;
using namespace std::chrono_literals;

namespace {

// The network of tests/libtorch/test_data_parallel.cpp, its norm layer a
// factory so that the synchronized one gets the process group.
template <class Norm>
struct NetImpl : torch::nn::Module {
  explicit NetImpl(const std::function<Norm(std::int64_t)>& norm)
      : stem(register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).padding(1).bias(false)))),
        bn1(register_module("bn1", norm(4))),
        conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)))),
        bn2(register_module("bn2", norm(4))),
        fc(register_module("fc", torch::nn::Linear(4, 3))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor h = torch::relu(bn1->forward(stem->forward(x)));
    return fc->forward(torch::relu(h + bn2->forward(conv->forward(h))).mean({2, 3}));
  }
  torch::nn::Conv2d stem;
  Norm bn1;
  torch::nn::Conv2d conv;
  Norm bn2;
  torch::nn::Linear fc;
};

using PlainNet = NetImpl<torch::nn::BatchNorm2d>;
using SyncNet = NetImpl<lt::SyncBatchNorm2d>;

std::vector<std::int64_t> process_sizes(int processes) {
  switch (processes) {
    case 1: return {13};
    case 2: return {6, 7};
    default: {
      std::vector<std::int64_t> sizes{5, 0, 8};
      sizes.resize(static_cast<std::size_t>(processes), 0);
      return sizes;
    }
  }
}

}  // namespace

TEST_CASE("A torch ResNet under DistributedDataParallel equals one thread on the global batch on every rank",
          "[libtorch][mpi]") {
  const int replicas = GENERATE(1, 2);
  auto& mpi = syncbn::testing::mpi_session();
  std::vector<int> ranks(static_cast<std::size_t>(mpi.world()->size()));
  std::iota(ranks.begin(), ranks.end(), 0);
  const auto group = mpi.new_group(ranks, 30s);
  const int rank = group->rank(), size = group->size();
  CAPTURE(replicas, rank, size, syncbn::testing::kSeed);

  // Every rank builds the reference alike; the synchronized network starts
  // from other values on the other ranks, which the constructor replaces
  // with rank 0's.
  torch::manual_seed(syncbn::testing::kSeed + 30);
  auto plain = std::make_shared<PlainNet>([](std::int64_t c) { return torch::nn::BatchNorm2d(c); });
  plain->to(torch::kDouble);
  torch::manual_seed(syncbn::testing::kSeed + 30 + static_cast<std::uint64_t>(rank));
  auto synced = std::make_shared<SyncNet>([&](std::int64_t c) {
    return lt::SyncBatchNorm2d(torch::nn::BatchNormOptions(c), lt::SyncOptions{30s, group});
  });
  synced->to(torch::kDouble);
  if (rank == 0) {
    torch::NoGradGuard no_grad;
    const auto params = plain->named_parameters();
    for (auto& item : synced->named_parameters()) item.value().copy_(params[item.key()]);
  }
  const auto norm = [group](std::int64_t c) {
    return lt::SyncBatchNorm2d(torch::nn::BatchNormOptions(c), lt::SyncOptions{30s, group});
  };
  lt::DistributedDataParallel ddp(synced, group,
                                  {.replicas = replicas,
                                   .timeout = 30s,
                                   .bucket_values = 50,
                                   .make_replica = [norm] { return std::make_shared<SyncNet>(norm); }});
  torch::optim::SGD plain_sgd(plain->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD synced_sgd(synced->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const auto sizes = process_sizes(size);
  const std::int64_t first = std::accumulate(sizes.begin(), sizes.begin() + rank, std::int64_t{0});
  const std::int64_t mine = sizes[static_cast<std::size_t>(rank)];
  const lt::ReplicaLoss loss = [](torch::nn::Module& m, const torch::Tensor& x, const torch::Tensor& t) {
    return torch::nn::functional::cross_entropy(static_cast<SyncNet&>(m).forward(x), t);
  };
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    torch::manual_seed(syncbn::testing::kSeed + 40 + static_cast<std::uint64_t>(step));
    const torch::Tensor x = torch::randn({13, 2, 4, 4}, torch::kDouble);
    const torch::Tensor y = torch::randint(0, 3, {13}, torch::kLong);
    plain_sgd.zero_grad();
    const torch::Tensor want = torch::nn::functional::cross_entropy(plain->forward(x), y);
    want.backward();
    plain_sgd.step();
    synced_sgd.zero_grad();
    const double got = ddp.step(x.narrow(0, first, mine), y.narrow(0, first, mine), loss);
    synced_sgd.step();
    CHECK(got == Approx(want.item<double>()).epsilon(1e-12));
  }
  const auto params = plain->named_parameters();
  for (const auto& item : synced->named_parameters()) {
    INFO(item.key());
    CHECK(torch::allclose(item.value(), params[item.key()], 1e-10, 1e-10));
  }
  const auto buffers = plain->named_buffers();
  for (const auto& item : synced->named_buffers()) {
    INFO(item.key());
    CHECK(torch::allclose(item.value().to(torch::kDouble), buffers[item.key()].to(torch::kDouble), 1e-10, 1e-10));
  }
}

TEST_CASE("A synchronized layer of no process group is refused by name", "[libtorch][mpi]") {
  auto& mpi = syncbn::testing::mpi_session();
  auto net = std::make_shared<SyncNet>([](std::int64_t c) { return lt::SyncBatchNorm2d(torch::nn::BatchNormOptions(c)); });
  CHECK_THROWS_WITH(lt::DistributedDataParallel(net, mpi.world(), {}),
                    "DistributedDataParallel: the synchronized batch norm 'bn1' (SyncBatchNorm2d(4)) has no process "
                    "group, expected this DistributedDataParallel's group (convert_sync_batchnorm(module, "
                    "{.process_group = group}))");
}
