// SyncBatchNorm across processes (Note [Hierarchical exchange]), under
// mpirun with 2, 3 and 4 processes: each process holds an uneven part of one
// global batch (one part empty from 3 processes on) and runs it on K = 1 or
// 2 logical CPU devices through the replica rendezvous, or on no replicas
// at all (the layer called directly). Outputs, input gradients, the weight
// and bias gradients summed over every replica of every process, and the
// running statistics on every rank must equal batch norm over the whole
// batch (float64 reference); then a process in another layer, and one a
// call ahead, fail the exchange on every rank with the named error.

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "mpi_world.hpp"
#include "support/batch_norm_spec.hpp"
#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"
#include "syncbn/parallel/replicate.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::check_close;
using syncbn::testing::mpi_session;
using syncbn::testing::Tolerance;

namespace {

constexpr Tolerance kFp32{1e-5, 1e-5};

// Each process's share of a global batch of 13: uneven, one empty from 3 on.
std::vector<std::int64_t> process_sizes(int processes) {
  switch (processes) {
    case 1: return {13};
    case 2: return {6, 7};
    case 3: return {5, 0, 8};
    default: {
      std::vector<std::int64_t> sizes{1, 4, 0};
      sizes.resize(static_cast<std::size_t>(processes), 0);
      sizes.back() += 8;
      return sizes;
    }
  }
}

std::shared_ptr<comm::ProcessGroup> fresh_world_group() {
  std::vector<int> ranks(static_cast<std::size_t>(mpi_session().world()->size()));
  std::iota(ranks.begin(), ranks.end(), 0);
  return mpi_session().new_group(ranks, 30s);
}

// The sum over every rank of each rank's values (rank order).
std::vector<double> sum_over_ranks(const std::vector<double>& v) {
  return mpi_session().world()->all_reduce_sum(v, "test: sum over ranks", 30s);
}

// cpu:0 .. cpu:k-1.
std::vector<Device> cpu_devices(int k) {
  std::vector<Device> devices;
  for (int i = 0; i < k; ++i) devices.push_back(Device::parse("cpu:" + std::to_string(i)));
  return devices;
}

// The layer's replicas over `devices`, or none (the layer called directly).
std::optional<parallel::Replication> replicate_over(nn::SyncBatchNorm& layer, const std::vector<Device>& devices) {
  if (devices.empty()) return std::nullopt;
  return parallel::replicate(layer, devices);
}

// One training step of this process's part: the layer called directly (no
// replicas), or its replicas over `devices` (the part split in two for two);
// the weight and bias gradients summed over the replicas, then cleared.
struct Step {
  Tensor y, dx;
  std::vector<double> dweight, dbias;
};

Step train_step(nn::SyncBatchNorm& layer, std::optional<parallel::Replication>& replicas,
                const std::vector<Device>& devices, const Tensor& x, const Tensor& dy) {
  Step step;
  const auto c = static_cast<std::size_t>(layer.num_features());
  step.dweight.assign(c, 0.0);
  step.dbias.assign(c, 0.0);
  if (!replicas) {
    step.y = layer.forward(x);
    step.dx = layer.backward(dy);
    step.dweight = layer.weight().grad.to_vector<double>();
    step.dbias = layer.bias().grad.to_vector<double>();
    layer.weight().grad.fill_(0.0);
    layer.bias().grad.fill_(0.0);
    return step;
  }
  const std::int64_t mine = x.size(0);
  const auto split = devices.size() == 1 ? std::vector<std::int64_t>{mine}
                                         : std::vector<std::int64_t>{mine / 2, mine - mine / 2};
  step.y = parallel::gather(parallel::parallel_apply(*replicas, parallel::scatter(x, devices, split)), Device());
  step.dx = parallel::gather(parallel::parallel_backward(*replicas, parallel::scatter(dy, devices, split)), Device());
  for (std::size_t k = 0; k < replicas->size(); ++k)
    for (std::size_t p = 0; p < 2; ++p) {
      auto* param = (*replicas)[k].parameters()[p];
      const auto g = param->grad.to_vector<double>();
      auto& total = p == 0 ? step.dweight : step.dbias;
      for (std::size_t i = 0; i < g.size(); ++i) total[i] += g[i];
      param->grad.fill_(0.0);
    }
  return step;
}

}  // namespace

TEST_CASE("SyncBatchNorm across processes equals batch norm over the whole batch on every rank", "[distributed][mpi]") {
  const Shape shape = GENERATE(Shape{13, 5}, Shape{13, 3, 2, 3}, Shape{13, 2, 2, 2, 3});
  const int replicas_per_process = GENERATE(0, 1, 2);  // 0: the layer alone, not replicated
  auto group = fresh_world_group();
  const int rank = group->rank(), size = group->size();
  CAPTURE(shape, replicas_per_process, rank, size, syncbn::testing::kSeed);

  const auto sizes = process_sizes(size);
  const std::int64_t first = std::accumulate(sizes.begin(), sizes.begin() + rank, std::int64_t{0});
  const std::int64_t mine = sizes[static_cast<std::size_t>(rank)];
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape), row = c * l;

  nn::BatchNormOptions options;
  options.momentum = 0.1;
  auto bn = syncbn::testing::make_batchnorm(false, syncbn::testing::spatial_dims_of(shape), c, options);
  bn->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 60, DType::Float32, Device(), 1.0, 0.5));
  bn->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 61, DType::Float32, Device()));
  auto layer = std::dynamic_pointer_cast<nn::SyncBatchNorm>(nn::convert_sync_batchnorm(bn, 30s, group));
  REQUIRE(layer != nullptr);
  CHECK(layer->process_group() == group);
  const auto wv = layer->weight().value.to_vector<double>(), bv = layer->bias().value.to_vector<double>();
  const testing::ref::BnConfig cfg{1e-5, 0.1, false};
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);

  const std::vector<Device> devices = cpu_devices(replicas_per_process);
  std::optional<parallel::Replication> replicas = replicate_over(*layer, devices);

  for (int step = 1; step <= 2; ++step) {
    INFO("training step " << step);
    const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + static_cast<std::uint64_t>(step), DType::Float32,
                                   Device(), 3.0, 2.0);
    const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 200 + static_cast<std::uint64_t>(step),
                                    DType::Float32, Device());
    const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), wv, bv, n, c, l, cfg);
    const Tensor x_mine = x.rows(first, first + mine).clone(), dy_mine = dy.rows(first, first + mine).clone();

    const Step got = train_step(*layer, replicas, devices, x_mine, dy_mine);
    check_close(got.y, testing::ref::rows_of(r.y, first, mine, row), kFp32, "this rank's output");
    check_close(got.dx, testing::ref::rows_of(r.dx, first, mine, row), kFp32, "this rank's grad_input");
    check_close(sum_over_ranks(got.dweight), r.dweight, kFp32, "grad_weight summed over replicas and ranks");
    check_close(sum_over_ranks(got.dbias), r.dbias, kFp32, "grad_bias summed over replicas and ranks");
    testing::ref::update_running(rm, rv, r, cfg, step);
    check_close(layer->running_mean(), rm, kFp32, "running_mean on this rank");
    check_close(layer->running_var(), rv, kFp32, "running_var on this rank");
    CHECK(layer->num_batches_tracked().item() == step);
  }
  // Eval never communicates: a process may evaluate alone.
  layer->eval();
  if (rank == 0) {
    const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 9, DType::Float32, Device(), 3.0, 2.0);
    const std::int64_t calls = group->calls();
    check_close(layer->forward(x), testing::ref::batch_norm_eval(x.to_vector<double>(), wv, bv, rm, rv, n, c, l, cfg),
                kFp32, "eval output");
    CHECK(group->calls() == calls);
  }
  mpi_session().world()->barrier("test: after eval", 30s);
}

TEST_CASE("Ghost batches span processes as they span replicas, in any layout and with a fused activation",
          "[distributed][mpi][ghost]") {
  const Shape shape = GENERATE(Shape{12, 5}, Shape{12, 3, 2, 3});
  const int replicas_per_process = GENERATE(0, 2);
  const auto [layout_option, act] = GENERATE(std::tuple{nn::ChannelLayout::First, nn::Activation::identity()},
                                             std::tuple{nn::ChannelLayout::Last, nn::Activation::relu()});
  const nn::ChannelLayout layout = layout_option;  // a plain variable: lambdas below capture it
  auto group = fresh_world_group();
  const int rank = group->rank(), size = group->size();
  CAPTURE(shape, replicas_per_process, core::channel_layout_name(layout), act.name(), rank, size, syncbn::testing::kSeed);
  // A global batch of 12 in groups of 4: {5, 7}, {5, 0, 7}, {1, 4, 0, 7}, so
  // that groups span processes (and one process holds none).
  std::vector<std::int64_t> sizes{5, 7};
  if (size == 3) sizes = {5, 0, 7};
  if (size >= 4) {
    sizes = {1, 4, 0};
    sizes.resize(static_cast<std::size_t>(size), 0);
    sizes.back() += 7;
  }
  if (size == 1) sizes = {12};
  const std::int64_t first = std::accumulate(sizes.begin(), sizes.begin() + rank, std::int64_t{0});
  const std::int64_t mine = sizes[static_cast<std::size_t>(rank)];
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape), row = c * l, v = 4;

  nn::BatchNormOptions options;
  options.virtual_batch_size = v;
  options.layout = layout;
  options.activation = act;
  auto bn = syncbn::testing::make_batchnorm(false, syncbn::testing::spatial_dims_of(shape), c, options);
  bn->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 70, DType::Float32, Device(), 1.0, 0.5));
  bn->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 71, DType::Float32, Device()));
  auto layer = std::dynamic_pointer_cast<nn::SyncBatchNorm>(nn::convert_sync_batchnorm(bn, 30s, group));
  REQUIRE(layer != nullptr);
  const auto wv = layer->weight().value.to_vector<double>(), bv = layer->bias().value.to_vector<double>();
  const testing::ref::BnConfig cfg{1e-5, 0.1, false};
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);
  const auto kind = static_cast<int>(act.kind);
  auto to_layout = [&](const Tensor& t) { return layout == nn::ChannelLayout::Last ? core::to_channels_last(t) : t; };
  auto to_first = [&](const Tensor& t) { return layout == nn::ChannelLayout::Last ? core::to_channels_first(t) : t; };

  const std::vector<Device> devices = cpu_devices(replicas_per_process);
  std::optional<parallel::Replication> replicas = replicate_over(*layer, devices);
  for (int step = 1; step <= 2; ++step) {
    INFO("training step " << step);
    const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 80 + static_cast<std::uint64_t>(step),
                                   DType::Float32, Device(), 1.0, 2.0);
    const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 90 + static_cast<std::uint64_t>(step),
                                    DType::Float32, Device());
    // The reference: batch norm per group of 4 samples, then the activation.
    const auto xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
    std::vector<double> want_y, want_dx, dweight(static_cast<std::size_t>(c), 0.0), dbias(dweight);
    testing::ref::BnResult first_group;
    for (std::int64_t g = 0; g < n / v; ++g) {
      const auto xg = testing::ref::rows_of(xv, g * v, v, row), dyg = testing::ref::rows_of(dyv, g * v, v, row);
      const auto z = testing::ref::batch_norm(xg, dyg, wv, bv, v, c, l, cfg).y;
      std::vector<double> dz(dyg.size());
      for (std::size_t i = 0; i < z.size(); ++i) {
        want_y.push_back(testing::spec::activate(kind, act.alpha, z[i]));
        dz[i] = dyg[i] * testing::spec::activation_slope(kind, act.alpha, z[i]);
      }
      const auto r = testing::ref::batch_norm(xg, dz, wv, bv, v, c, l, cfg);
      want_dx.insert(want_dx.end(), r.dx.begin(), r.dx.end());
      for (std::size_t j = 0; j < dweight.size(); ++j) dweight[j] += r.dweight[j], dbias[j] += r.dbias[j];
      if (g == 0) first_group = r;
    }
    const Tensor x_mine = to_layout(x.rows(first, first + mine).clone());
    const Tensor dy_mine = to_layout(dy.rows(first, first + mine).clone());
    const Step got = train_step(*layer, replicas, devices, x_mine, dy_mine);
    check_close(to_first(got.y), testing::ref::rows_of(want_y, first, mine, row), kFp32, "this rank's output");
    check_close(to_first(got.dx), testing::ref::rows_of(want_dx, first, mine, row), kFp32, "this rank's grad_input");
    check_close(sum_over_ranks(got.dweight), dweight, kFp32, "grad_weight summed over replicas and ranks");
    check_close(sum_over_ranks(got.dbias), dbias, kFp32, "grad_bias summed over replicas and ranks");
    // The running statistics follow the job's first ghost batch on every rank.
    testing::ref::update_running(rm, rv, first_group, cfg, step);
    check_close(layer->running_mean(), rm, kFp32, "running_mean on this rank");
    check_close(layer->running_var(), rv, kFp32, "running_var on this rank");
  }
}

TEST_CASE("SyncBatchNorm over subgroups of pairs synchronizes within each pair only", "[distributed][mpi]") {
  auto world = mpi_session().world();
  const int rank = world->rank(), size = world->size();
  CAPTURE(rank, size, syncbn::testing::kSeed);
  // Pairs {0, 1}, {2, 3}, ...; with an odd size the last rank is alone.
  std::shared_ptr<comm::ProcessGroup> pair;
  for (int first = 0; first < size; first += 2) {
    std::vector<int> ranks{first};
    if (first + 1 < size) ranks.push_back(first + 1);
    if (auto g = mpi_session().new_group(ranks, 30s)) pair = g;
  }
  REQUIRE(pair != nullptr);
  const int first = rank - rank % 2;
  const std::int64_t pair_size = std::min(2, size - first);
  // Every rank draws the same (3 x size, 4) batch; a pair's batch is its
  // ranks' rows, 3 each.
  const std::int64_t c = 4;
  const Tensor x = Tensor::randn(Shape{3 * size, c}, syncbn::testing::kSeed + 70, DType::Float32, Device(), 1.0, 2.0);
  const Tensor dy = Tensor::randn(Shape{3 * size, c}, syncbn::testing::kSeed + 71);
  nn::SyncBatchNorm1d layer(c, {}, 30s, pair);
  const Tensor y = layer.forward(x.rows(3 * rank, 3 * rank + 3).clone());
  const Tensor dx = layer.backward(dy.rows(3 * rank, 3 * rank + 3).clone());
  const std::int64_t rows = 3 * pair_size;
  const testing::ref::BnConfig cfg{1e-5, 0.1, false};
  const auto r = testing::ref::batch_norm(x.rows(3 * first, 3 * first + rows).to_vector<double>(),
                                          dy.rows(3 * first, 3 * first + rows).to_vector<double>(),
                                          std::vector<double>(c, 1.0), std::vector<double>(c, 0.0), rows, c, 1, cfg);
  const std::int64_t offset = 3 * (rank - first);
  check_close(y, testing::ref::rows_of(r.y, offset, 3, c), kFp32, "output: batch norm over the pair's rows");
  check_close(dx, testing::ref::rows_of(r.dx, offset, 3, c), kFp32, "grad_input over the pair's rows");
  world->barrier("test: after subgroups", 30s);
}

TEST_CASE("A process in another SyncBatchNorm layer fails the exchange on every rank, naming each layer",
          "[distributed][mpi]") {
  auto group = fresh_world_group();
  const int rank = group->rank();
  CAPTURE(rank);
  // Two models whose layers are named by their paths once replicated.
  auto first = std::make_shared<nn::SyncBatchNorm1d>(3, nn::BatchNormOptions{}, 30s, group);
  auto second = std::make_shared<nn::SyncBatchNorm1d>(3, nn::BatchNormOptions{}, 30s, group);
  nn::Sequential model_a, model_b;
  model_a.add("block1", first);
  model_b.add("block2", second);
  const std::vector<Device> devices{Device::parse("cpu:0")};
  // Rank 1 runs the other model.
  auto replicas = parallel::replicate(rank == 1 ? model_b : model_a, devices);
  const Tensor x = Tensor::randn(Shape{4, 3}, syncbn::testing::kSeed + 5);
  try {
    parallel::parallel_apply(replicas, {x});
    FAIL("expected a CommError");
  } catch (const CommError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("make different collectives, expected the same on every rank"));
    CHECK_THAT(what, Catch::Contains("rank 1 in all_gather 'SyncBatchNorm1d 'block2' forward' (call 0, 56 bytes)"));
    CHECK_THAT(what, Catch::Contains("in all_gather 'SyncBatchNorm1d 'block1' forward' (call 0, 56 bytes)"));
  }
  // No running statistics changed on any rank: the round failed before them.
  CHECK(first->num_batches_tracked().item() == 0);
  CHECK(second->num_batches_tracked().item() == 0);
  mpi_session().world()->barrier("test: after another layer", 30s);
}

TEST_CASE("A process that never arrives at a SyncBatchNorm exchange makes the others time out, naming the layer",
          "[distributed][mpi]") {
  auto group = fresh_world_group();
  const int rank = group->rank();
  CAPTURE(rank);
  nn::SyncBatchNorm2d layer(2, {}, 300ms, group);
  const Tensor x = Tensor::randn(Shape{2, 2, 2, 2}, syncbn::testing::kSeed + 6);
  if (rank != 0) {
    CHECK_THROWS_MATCHES(layer.forward(x), Timeout,
                         syncbn::testing::MessageContains("'SyncBatchNorm2d forward': not every rank of MPI group of"));
    CHECK(layer.num_batches_tracked().item() == 0);
  }
  mpi_session().world()->barrier("test: after a missing process", 30s);
  if (rank == 0) {
    // Rank 0 arrives late: its header completes the others' abandoned header
    // exchange, and it then waits in vain for their statistics.
    CHECK_THROWS_MATCHES(layer.forward(x), Timeout,
                         syncbn::testing::MessageContains("'SyncBatchNorm2d forward': not every rank of MPI group of"));
  }
  mpi_session().world()->barrier("test: after the late process", 30s);
}
