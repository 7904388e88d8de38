// The EMA update modes of BatchNorm and SyncBatchNorm 1d/2d/3d (tensorpack's
// ema_update): Internal (the default, PyTorch's), Skip (never) and Deferred
// (kept until apply_running_updates, then applied in order), under K = 1..8
// replicas with uneven shards, against the float64 reference of PyTorch's
// running-statistics rule. Device-generic.

#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::make_batchnorm;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;
using syncbn::testing::Tolerance;

namespace {

constexpr Tolerance kFp32{1e-5, 1e-5};

}  // namespace

TEST_CASE("Skip leaves the running statistics alone and Deferred applies them later as Internal would",
          "[nn][ema][threads]") {
  const Shape shape = GENERATE(Shape{11, 5}, Shape{11, 3, 2, 3}, Shape{11, 2, 2, 2, 3});
  // SyncBatchNorm over 1, 2 and 4 replicas (statistics of the whole batch)
  // and BatchNorm on one device; per-replica shards: the next case.
  const auto [sync, replicas] = GENERATE(std::pair{false, 1}, std::pair{true, 1}, std::pair{true, 2}, std::pair{true, 4});
  const nn::EmaUpdate mode = GENERATE(nn::EmaUpdate::Internal, nn::EmaUpdate::Skip, nn::EmaUpdate::Deferred);
  CAPTURE(shape, sync, replicas, static_cast<int>(mode), syncbn::testing::kSeed);
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape);
  nn::BatchNormOptions options;
  options.ema_update = mode;
  options.device = test_device();
  auto layer = make_batchnorm(sync, syncbn::testing::spatial_dims_of(shape), c, options);
  const std::vector<double> ones(static_cast<std::size_t>(c), 1.0), zeros(static_cast<std::size_t>(c), 0.0);
  const testing::ref::BnConfig cfg{1e-5, 0.1, false};
  std::vector<double> rm = zeros, rv = ones;  // the reference's Internal updates

  parallel::DataParallel dp(layer, test_devices(replicas));
  for (int step = 1; step <= 3; ++step) {
    INFO("step " << step);
    const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 90 + static_cast<std::uint64_t>(step),
                                   DType::Float32, test_device(), 1.0, 2.0);
    const auto r = testing::ref::batch_norm(x.to_vector<double>(), std::vector<double>(static_cast<std::size_t>(n * c * l), 0.0),
                                            ones, zeros, n, c, l, cfg);
    // The output normalises with the batch's statistics in every mode.
    check_close(dp.forward(x), r.y, kFp32, "output");
    testing::ref::update_running(rm, rv, r, cfg, step);
  }
  switch (mode) {
    case nn::EmaUpdate::Internal:
      check_close(layer->running_mean(), rm, kFp32, "running_mean");
      check_close(layer->running_var(), rv, kFp32, "running_var");
      CHECK(layer->num_batches_tracked().item() == 3);
      CHECK(layer->pending_running_updates() == 0);
      CHECK(layer->apply_running_updates() == 0);
      break;
    case nn::EmaUpdate::Skip:
      CHECK(layer->running_mean().to_vector<double>() == zeros);
      CHECK(layer->running_var().to_vector<double>() == ones);
      CHECK(layer->num_batches_tracked().item() == 0);
      CHECK(layer->apply_running_updates() == 0);
      break;
    case nn::EmaUpdate::Deferred:
      CHECK(layer->running_mean().to_vector<double>() == zeros);
      CHECK(layer->num_batches_tracked().item() == 0);
      CHECK(layer->pending_running_updates() == 3);
      CHECK(nn::apply_running_updates(*layer) == 3);
      CHECK(layer->pending_running_updates() == 0);
      check_close(layer->running_mean(), rm, kFp32, "running_mean after apply_running_updates");
      check_close(layer->running_var(), rv, kFp32, "running_var after apply_running_updates");
      CHECK(layer->num_batches_tracked().item() == 3);
      break;
  }
}

TEST_CASE("Deferred updates of a model's layers are applied once, from copy 0's batches", "[nn][ema][threads]") {
  // Per-replica BatchNorm over 2 replicas: Internal updates the module from
  // copy 0's shard; Deferred must end with the same running statistics.
  const std::int64_t c = 3;
  const auto devices = test_devices(2);
  const Tensor x1 = Tensor::randn(Shape{8, c}, syncbn::testing::kSeed + 95, DType::Float32, test_device(), 1.0, 2.0);
  const Tensor x2 = Tensor::randn(Shape{8, c}, syncbn::testing::kSeed + 96, DType::Float32, test_device(), -1.0, 3.0);
  std::vector<std::vector<double>> finals;
  for (const nn::EmaUpdate mode : {nn::EmaUpdate::Internal, nn::EmaUpdate::Deferred}) {
    auto model = std::make_shared<nn::Sequential>();
    model->add("bn", std::make_shared<nn::BatchNorm1d>(c, nn::BatchNormOptions{.ema_update = mode, .device = test_device()}));
    parallel::DataParallel dp(model, devices);
    dp.forward(x1);
    dp.forward(x2);
    if (mode == nn::EmaUpdate::Deferred) CHECK(nn::apply_running_updates(*model) == 2);
    auto& bn = dynamic_cast<nn::BatchNorm1d&>(*model->children()[0].second);
    CHECK(bn.num_batches_tracked().item() == 2);
    auto state = bn.running_mean().to_vector<double>();
    const auto var = bn.running_var().to_vector<double>();
    state.insert(state.end(), var.begin(), var.end());
    finals.push_back(state);
  }
  check_close(finals[1], finals[0], Tolerance{0, 0}, "Deferred's running statistics against Internal's");
}

TEST_CASE("An unknown EMA mode is refused", "[nn][ema]") {
  nn::BatchNormOptions options;
  options.ema_update = static_cast<nn::EmaUpdate>(9);
  CHECK_THROWS_MATCHES(nn::BatchNorm1d(2, options), InvalidArgument,
                       MessageIs("BatchNorm1d: ema_update 9, expected EmaUpdate::Internal, Skip or Deferred"));
  options.ema_update = nn::EmaUpdate::Deferred;
  CHECK(nn::SyncBatchNorm2d(2, options).describe() ==
        "SyncBatchNorm2d(2, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true, ema_update=deferred)");
  CHECK(nn::BatchNormOptions{}.ema_update == nn::EmaUpdate::Internal);
}
