// DistributedDataParallel under mpirun with 2, 3 and 4 processes: an MLP
// with SyncBatchNorm1d synchronized over the processes, trained with SGD on
// uneven parts of each global batch over 2 local devices per process, must
// give the losses, parameters and running statistics of one process
// training the same model with DataParallel over 4 devices on the whole
// batch (Note [Distributed gradients]); and a start from different weights
// is replaced by rank 0's.

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "mpi_world.hpp"
#include "support/compare.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/distributed/distributed_data_parallel.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/loss.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/optim/sgd.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::check_close;
using syncbn::testing::mpi_session;
using syncbn::testing::Tolerance;

namespace {

std::shared_ptr<nn::Sequential> mlp(std::uint64_t seed) {
  auto model = std::make_shared<nn::Sequential>();
  model->add("fc1", std::make_shared<nn::Linear>(6, 16, nn::LinearOptions{true, seed}));
  model->add("bn1", std::make_shared<nn::BatchNorm1d>(16));
  model->add("relu", std::make_shared<nn::ReLU>());
  model->add("fc2", std::make_shared<nn::Linear>(16, 3, nn::LinearOptions{true, seed + 1}));
  return model;
}

std::vector<Device> cpu_devices(int count) {
  std::vector<Device> devices;
  for (int k = 0; k < count; ++k) devices.push_back(Device::parse("cpu:" + std::to_string(k)));
  return devices;
}

// Each process's part of a global batch of 24: uneven.
std::vector<std::int64_t> parts(int processes) {
  switch (processes) {
    case 1: return {24};
    case 2: return {10, 14};
    case 3: return {6, 8, 10};
    default: {
      std::vector<std::int64_t> p(static_cast<std::size_t>(processes), 4);
      p[0] = 2;
      p[1] = 6;
      p.back() = 24 - 2 - 6 - 4 * (processes - 3);
      return p;
    }
  }
}

std::vector<double> all_values(nn::Module& model) {
  std::vector<double> out;
  for (nn::Parameter* p : model.parameters()) {
    const auto v = p->value.to_vector<double>();
    out.insert(out.end(), v.begin(), v.end());
  }
  for (auto& [name, buffer] : model.named_buffers()) {
    const auto v = buffer->to_vector<double>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

}  // namespace

TEST_CASE("Training over processes with DistributedDataParallel equals one process on the whole batch",
          "[distributed][mpi]") {
  auto world = mpi_session().world();
  const int rank = world->rank(), size = world->size();
  CAPTURE(rank, size, syncbn::testing::kSeed);
  std::vector<int> ranks(static_cast<std::size_t>(size));
  std::iota(ranks.begin(), ranks.end(), 0);
  auto group = mpi_session().new_group(ranks, 30s);

  // Every rank starts from other weights: the constructor takes rank 0's.
  auto model = nn::convert_sync_batchnorm(mlp(syncbn::testing::kSeed + 10 * static_cast<std::uint64_t>(rank)), 30s,
                                          group);
  distributed::DistributedDataParallel ddp(model, cpu_devices(2), group);
  optim::SGD sgd(model->parameters(), optim::SGDOptions{0.1, 0.9});

  // The reference on every rank: one process, 4 devices, the whole batch.
  auto reference = nn::convert_sync_batchnorm(mlp(syncbn::testing::kSeed), 30s);
  parallel::DataParallel dp(reference, cpu_devices(4));
  optim::SGD reference_sgd(reference->parameters(), optim::SGDOptions{0.1, 0.9});
  check_close(all_values(*model), all_values(*reference), Tolerance{0, 0}, "rank 0's start on every rank");

  const auto sizes = parts(size);
  const std::int64_t first = std::accumulate(sizes.begin(), sizes.begin() + rank, std::int64_t{0});
  const std::int64_t mine = sizes[static_cast<std::size_t>(rank)];
  nn::CrossEntropyLoss loss, reference_loss;
  for (int step = 0; step < 6; ++step) {
    INFO("step " << step);
    const Tensor x = Tensor::randn(Shape{24, 6}, syncbn::testing::kSeed + 100 + static_cast<std::uint64_t>(step));
    std::vector<std::int64_t> labels(24);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int64_t>((i * 7 + static_cast<std::size_t>(step)) % 3);
    const Tensor targets = Tensor::from_vector(labels, Shape{24});

    sgd.zero_grad();
    const Tensor out = ddp.forward(x.rows(first, first + mine).clone());
    CHECK(ddp.global_batch() == 24);
    CHECK(ddp.local_batch() == mine);
    const double local_loss = loss.forward(out, targets.rows(first, first + mine).clone()).item();
    ddp.backward(loss.backward());
    sgd.step();
    // The whole batch's loss: the parts' means weighted by their sizes.
    const double weighted = local_loss * static_cast<double>(mine) / 24.0;
    const double global_loss = world->all_reduce_sum(std::span(&weighted, 1), "test: loss", 30s)[0];

    reference_sgd.zero_grad();
    const double want = reference_loss.forward(dp.forward(x), targets).item();
    dp.backward(reference_loss.backward());
    reference_sgd.step();
    CHECK_THAT(global_loss, Catch::Matchers::WithinRel(want, 1e-5) || Catch::Matchers::WithinAbs(want, 1e-6));
  }
  check_close(all_values(*model), all_values(*reference), Tolerance{1e-4, 1e-5},
              "parameters and running statistics after 6 steps");
}

TEST_CASE("DistributedDataParallel refuses a null module or group and a backward without forward", "[distributed][mpi]") {
  auto world = mpi_session().world();
  CHECK_THROWS_MATCHES(distributed::DistributedDataParallel(nullptr, cpu_devices(1), world), InvalidArgument,
                       syncbn::testing::MessageIs("DistributedDataParallel: module is null, expected a module"));
  CHECK_THROWS_MATCHES(distributed::DistributedDataParallel(mlp(1), cpu_devices(1), nullptr), InvalidArgument,
                       syncbn::testing::MessageIs("DistributedDataParallel: process group is null, expected a group"));
  distributed::DistributedDataParallel ddp(mlp(1), cpu_devices(1), world);
  CHECK_THROWS_MATCHES(ddp.backward(Tensor::zeros(Shape{2, 3})), InvalidArgument,
                       syncbn::testing::MessageIs("DistributedDataParallel::backward: no forward to go back through, "
                                                  "expected a successful forward first"));
  // A refused grad_output leaves no trace of the step's forward.
  auto model = mlp(2);
  distributed::DistributedDataParallel stepped(model, cpu_devices(1), world);
  const auto before = all_values(*model);
  stepped.forward(Tensor::randn(Shape{4, 6}, syncbn::testing::kSeed + static_cast<std::uint64_t>(world->rank())));
  CHECK(all_values(*model) != before);  // the forward counted a batch
  CHECK_THROWS_MATCHES(stepped.backward(Tensor()), InvalidArgument,
                       syncbn::testing::MessageContains("grad_output is undefined, expected a tensor"));
  CHECK(all_values(*model) == before);
}
