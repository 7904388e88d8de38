// The invariance test: SyncBatchNorm over K replicas on a split batch equals
// batch norm over the whole batch (float64 reference) - outputs, input
// gradients, weight and bias gradients summed over replicas, running mean,
// unbiased running variance and num_batches_tracked - for uneven, empty and
// size-1 shards, every layout, affine on/off, momentum 0.1 / 1.0 / none, both
// eps modes, several training steps, then eval. Device-generic.

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/reference.hpp"
#include "support/replica_grads.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::make_batchnorm;
using syncbn::testing::spatial_dims_of;
using syncbn::testing::test_device;
using syncbn::testing::take_grad_sum;
using syncbn::testing::test_devices;
using syncbn::testing::Tolerance;

namespace {

// Float32 target tolerance of the invariance (relative-or-absolute).
constexpr Tolerance kFp32{1e-5, 1e-5};

struct Layout {
  const char* name;
  Shape shape;  // batch of 13
};

struct Split {
  const char* name;
  std::vector<std::int64_t> sizes;  // sums to 13
};

struct Config {
  const char* name;
  bool affine;
  std::optional<double> momentum;
  bool clamp;
};

std::vector<Device> devices_for(const Split& split) { return test_devices(static_cast<int>(split.sizes.size())); }

// One step on split shards: returns (y, dx) gathered.
std::pair<Tensor, Tensor> split_step(parallel::Replication& replicas, const Tensor& x, const Tensor& dy,
                                     const std::vector<std::int64_t>& sizes) {
  const auto& devices = replicas.devices();
  const auto outputs = parallel::parallel_apply(replicas, parallel::scatter(x, devices, sizes));
  const auto grads = parallel::parallel_backward(replicas, parallel::scatter(dy, devices, sizes));
  return {parallel::gather(outputs, test_device()), parallel::gather(grads, test_device())};
}

}  // namespace

TEST_CASE("SyncBatchNorm over split replicas equals batch norm over the whole batch", "[nn][threads]") {
  const Layout layout = GENERATE(Layout{"1d (N, C)", Shape{13, 5}}, Layout{"1d (N, C, L)", Shape{13, 4, 3}},
                                 Layout{"2d", Shape{13, 3, 2, 3}}, Layout{"3d", Shape{13, 2, 2, 2, 3}});
  const Split split = GENERATE(Split{"one replica", {13}}, Split{"two even-ish", {7, 6}},
                               Split{"uneven with a size-1 shard", {1, 5, 7}}, Split{"empty shards", {6, 0, 7, 0}},
                               Split{"size-1 shards", {1, 1, 1, 5, 5}}, Split{"eight", {2, 2, 2, 2, 2, 1, 1, 1}},
                               Split{"eight with empties", {0, 4, 0, 4, 0, 4, 0, 1}});
  const Config config = GENERATE(Config{"affine, 0.1, plus", true, 0.1, false},
                                 Config{"no affine, 1.0, clamp", false, 1.0, true},
                                 Config{"affine, cumulative, clamp", true, std::nullopt, true},
                                 Config{"no affine, cumulative, plus", false, std::nullopt, false},
                                 Config{"affine, 1.0, plus", true, 1.0, false});
  CAPTURE(layout.name, split.name, config.name, syncbn::testing::kSeed);

  const std::int64_t n = layout.shape[0], c = layout.shape[1], l = syncbn::testing::spatial_size(layout.shape);
  nn::BatchNormOptions options;
  options.momentum = config.momentum;
  options.affine = config.affine;
  options.eps_mode = config.clamp ? nn::EpsMode::Clamp : nn::EpsMode::Plus;
  options.device = test_device();
  auto layer = make_batchnorm(true, spatial_dims_of(layout.shape), c, options);
  if (config.affine) {
    layer->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 60, DType::Float32, test_device(), 1.0, 0.5));
    layer->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 61, DType::Float32, test_device()));
  }
  const auto wv = config.affine ? layer->weight().value.to_vector<double>() : std::vector<double>{};
  const auto bv = config.affine ? layer->bias().value.to_vector<double>() : std::vector<double>{};
  const testing::ref::BnConfig cfg{1e-5, config.momentum, config.clamp};
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);

  auto replicas = parallel::replicate(*layer, devices_for(split));
  for (int step = 1; step <= 3; ++step) {
    INFO("training step " << step);
    const Tensor x = Tensor::randn(layout.shape, syncbn::testing::kSeed + static_cast<std::uint64_t>(step),
                                   DType::Float32, test_device(), 3.0, 2.0);
    const Tensor dy = Tensor::randn(layout.shape, syncbn::testing::kSeed + 200 + static_cast<std::uint64_t>(step),
                                    DType::Float32, test_device());
    const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), wv, bv, n, c, l, cfg);
    const auto [y, dx] = split_step(replicas, x, dy, split.sizes);
    check_close(y, r.y, kFp32, "output");
    check_close(dx, r.dx, kFp32, "grad_input");
    if (config.affine) {
      check_close(take_grad_sum(replicas, 0), r.dweight, kFp32, "grad_weight summed over replicas");
      check_close(take_grad_sum(replicas, 1), r.dbias, kFp32, "grad_bias summed over replicas");
    }
    testing::ref::update_running(rm, rv, r, cfg, step);
    check_close(layer->running_mean(), rm, kFp32, "running_mean of the module");
    check_close(layer->running_var(), rv, kFp32, "running_var of the module");
    CHECK(layer->num_batches_tracked().item() == step);
  }

  // Replicas other than copy 0 hold copies of the buffers taken when they
  // were made (DataParallel refreshes them every forward): replicate again.
  layer->eval();
  auto eval_replicas = parallel::replicate(*layer, devices_for(split));
  const Tensor x = Tensor::randn(layout.shape, syncbn::testing::kSeed + 9, DType::Float32, test_device(), 3.0, 2.0);
  const auto outputs = parallel::parallel_apply(eval_replicas, parallel::scatter(x, devices_for(split), split.sizes));
  check_close(parallel::gather(outputs, test_device()),
              testing::ref::batch_norm_eval(x.to_vector<double>(), wv, bv, rm, rv, n, c, l, cfg), kFp32, "eval output");
  CHECK(layer->num_batches_tracked().item() == 3);
}

TEST_CASE("SyncBatchNorm stays exact when the mean is 1e4 times the standard deviation", "[nn][threads]") {
  const std::vector<std::int64_t> sizes = GENERATE(std::vector<std::int64_t>{4, 4, 4, 4},
                                                   std::vector<std::int64_t>{1, 7, 0, 8});
  CAPTURE(sizes, syncbn::testing::kSeed);
  const Shape shape{16, 3, 8, 8};
  auto layer = std::make_shared<nn::SyncBatchNorm2d>(3, nn::BatchNormOptions{.device = test_device()});
  auto replicas = parallel::replicate(*layer, test_devices(4));
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, test_device(), 1e4, 1.0);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float32, test_device());
  const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), {}, {}, 16, 3, 64, {});
  const auto [y, dx] = split_step(replicas, x, dy, sizes);
  check_close(y, r.y, kFp32, "output");
  check_close(dx, r.dx, kFp32, "grad_input");
  std::vector<double> rm(3, 0.0), rv(3, 1.0);
  testing::ref::update_running(rm, rv, r, {}, 1);
  check_close(layer->running_mean(), rm, kFp32, "running_mean");
  check_close(layer->running_var(), rv, kFp32, "running_var");
}

TEST_CASE("Per-replica BatchNorm on the same split departs from whole-batch batch norm", "[nn][threads]") {
  // Why the synchronisation matters: the same setup with local statistics.
  const std::vector<std::int64_t> sizes{2, 2, 2, 2, 2, 2, 1};
  const Shape shape{13, 3, 2, 3};
  auto layer = make_batchnorm(false, 2, 3, nn::BatchNormOptions{.device = test_device()});
  auto replicas = parallel::replicate(*layer, test_devices(7));
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, test_device(), 3.0, 2.0);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float32, test_device());
  const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), {}, {}, 13, 3, 6, {});
  const auto y = parallel::gather(parallel::parallel_apply(replicas, parallel::scatter(x, test_devices(7), sizes)),
                                  test_device())
                     .to_vector<double>();
  double max_diff = 0;
  for (std::size_t i = 0; i < y.size(); ++i) max_diff = std::max(max_diff, std::abs(y[i] - r.y[i]));
  CHECK(max_diff > 0.1);
}

TEST_CASE("SyncBatchNorm under DataParallel trains like batch norm on one device", "[nn][threads]") {
  // DataParallel's even split, its gradient reduction and its buffer handling.
  const int k = GENERATE(2, 4);
  CAPTURE(k);
  const Shape shape{10, 3, 2, 2};
  auto single = std::make_shared<nn::BatchNorm2d>(3, nn::BatchNormOptions{.device = test_device()});
  auto synced = nn::convert_sync_batchnorm(single->clone());
  parallel::DataParallel dp(synced, test_devices(k), std::nullopt, {syncbn::testing::test_on_cuda()});
  for (int step = 1; step <= 3; ++step) {
    const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + static_cast<std::uint64_t>(step), DType::Float32,
                                   test_device(), -1.0, 3.0);
    const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 50 + static_cast<std::uint64_t>(step),
                                    DType::Float32, test_device());
    single->zero_grad();
    synced->zero_grad();
    check_close(dp.forward(x), single->forward(x).to_vector<double>(), kFp32, "output");
    check_close(dp.backward(dy), single->backward(dy).to_vector<double>(), kFp32, "grad_input");
    auto& sbn = static_cast<nn::BatchNorm&>(*synced);
    check_close(sbn.weight().grad, single->weight().grad.to_vector<double>(), kFp32, "grad_weight");
    check_close(sbn.bias().grad, single->bias().grad.to_vector<double>(), kFp32, "grad_bias");
    check_close(sbn.running_mean(), single->running_mean().to_vector<double>(), kFp32, "running_mean");
    check_close(sbn.running_var(), single->running_var().to_vector<double>(), kFp32, "running_var");
    CHECK(sbn.num_batches_tracked().item() == step);
  }
}

TEST_CASE("SyncBatchNorm accepts float16 and bfloat16 input with float32 statistics", "[nn][threads]") {
  const DType dtype = GENERATE(DType::Float16, DType::BFloat16);
  CAPTURE(dtype, syncbn::testing::kSeed);
  const Shape shape{12, 4, 3, 3};
  auto layer = std::make_shared<nn::SyncBatchNorm2d>(4, nn::BatchNormOptions{.device = test_device()});
  auto replicas = parallel::replicate(*layer, test_devices(3));
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, test_device(), 2.0, 3.0).to(dtype);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float32, test_device()).to(dtype);
  // The reference sees the same rounded inputs, in float64.
  const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), {}, {}, 12, 4, 9, {});
  const auto [y, dx] = split_step(replicas, x, dy, {5, 0, 7});
  CHECK(y.dtype() == dtype);
  // Outputs are rounded to 16 bits once: the dtype's tolerance.
  check_close(y, r.y, syncbn::testing::tolerance_for(dtype), "output");
  check_close(dx, r.dx, syncbn::testing::tolerance_for(dtype), "grad_input");
  std::vector<double> rm(4, 0.0), rv(4, 1.0);
  testing::ref::update_running(rm, rv, r, {}, 1);
  check_close(layer->running_mean(), rm, kFp32, "running_mean (float32)");
  check_close(layer->running_var(), rv, kFp32, "running_var (float32)");
}

TEST_CASE("SyncBatchNorm over replicas whose shards are all empty gives empty outputs and counts a batch",
          "[nn][threads]") {
  // Every partial has count 0: the merge has nothing to weigh, and the step
  // must produce no NaN and change no running statistic; it counts as a
  // batch, as an empty batch does for BatchNorm (and in PyTorch).
  auto layer = std::make_shared<nn::SyncBatchNorm2d>(2, nn::BatchNormOptions{.device = test_device()});
  auto replicas = parallel::replicate(*layer, test_devices(3));
  const Tensor x = Tensor::zeros(Shape{0, 2, 3, 3}, DType::Float32, test_device());
  const auto [y, dx] = split_step(replicas, x, x, {0, 0, 0});
  CHECK(y.shape() == Shape{0, 2, 3, 3});
  CHECK(dx.shape() == Shape{0, 2, 3, 3});
  CHECK(layer->num_batches_tracked().item() == 1);
  CHECK(layer->running_mean().to_vector<float>() == std::vector<float>{0, 0});
  CHECK(layer->running_var().to_vector<float>() == std::vector<float>{1, 1});
  CHECK(take_grad_sum(replicas, 0) == std::vector<double>{0, 0});
  CHECK(take_grad_sum(replicas, 1) == std::vector<double>{0, 0});
}

TEST_CASE("SyncBatchNorm gives a NaN running variance for a NaN input whatever the replica count", "[nn][threads]") {
  // The merge of several replicas propagated the NaN while one replica's own
  // statistics clamped it away; both must give NaN, as PyTorch does.
  const int k = GENERATE(1, 3);
  INFO(k << " replicas");
  auto layer = std::make_shared<nn::SyncBatchNorm1d>(2, nn::BatchNormOptions{.device = test_device()});
  auto replicas = parallel::replicate(*layer, test_devices(k));
  auto values = Tensor::randn(Shape{6, 2}, syncbn::testing::kSeed, DType::Float32, test_device()).to_vector<float>();
  values[4] = std::nanf("");  // sample 2, channel 0
  const Tensor x = Tensor::from_vector(values, Shape{6, 2}, test_device());
  parallel::parallel_apply(replicas, parallel::scatter(x, replicas.devices(), std::vector<std::int64_t>(
                                                                                  static_cast<std::size_t>(k), 6 / k)));
  const auto rv = layer->running_var().to_vector<float>();
  CHECK(std::isnan(rv[0]));
  CHECK(std::isfinite(rv[1]));
}
