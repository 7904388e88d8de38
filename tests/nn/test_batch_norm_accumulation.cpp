// Micro-batch accumulation (BatchNorm::accumulate_statistics) for BatchNorm
// and SyncBatchNorm 1d/2d/3d over 1, 2 and 4 replicas: each micro-batch is
// normalised by its own statistics, and after n of them the running
// statistics take one update from the statistics of their union (float64
// reference of PyTorch's rule applied to the concatenated batch), with
// Internal and Deferred EMA modes; errors change nothing. Device-generic.

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

std::vector<double> concat(const std::vector<std::vector<double>>& parts) {
  std::vector<double> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

TEST_CASE("Accumulated micro-batches update the running statistics once, as their union would",
          "[nn][accumulate][threads]") {
  const Shape shape = GENERATE(Shape{8, 5}, Shape{8, 3, 2, 3}, Shape{8, 2, 2, 2, 3});
  const auto [sync, replicas] = GENERATE(std::pair{false, 1}, std::pair{true, 2}, std::pair{true, 4});
  const nn::EmaUpdate mode = GENERATE(nn::EmaUpdate::Internal, nn::EmaUpdate::Deferred);
  const std::optional<double> momentum = GENERATE(std::optional<double>{0.1}, std::optional<double>{});
  CAPTURE(shape, sync, replicas, static_cast<int>(mode), momentum.has_value(), syncbn::testing::kSeed);
  const std::int64_t c = shape[1], l = syncbn::testing::spatial_size(shape);
  nn::BatchNormOptions options;
  options.ema_update = mode;
  options.momentum = momentum;
  options.device = test_device();
  auto layer = make_batchnorm(sync, syncbn::testing::spatial_dims_of(shape), c, options);
  auto model = std::make_shared<nn::Sequential>();
  model->add("bn", layer);
  CHECK(nn::accumulate_statistics(*model, 3) == 1);
  CHECK(layer->accumulation() == 3);
  parallel::DataParallel dp(model, test_devices(replicas));
  const std::vector<double> ones(static_cast<std::size_t>(c), 1.0), zeros(static_cast<std::size_t>(c), 0.0);
  const testing::ref::BnConfig cfg{1e-5, momentum, false};
  std::vector<double> rm = zeros, rv = ones;

  // Micro-batches of 8, 4 and 6 rows: 18 rows per update, twice.
  const std::int64_t rows[3] = {8, 4, 6};
  for (int update = 1; update <= 2; ++update) {
    std::vector<std::vector<double>> parts;
    for (int k = 0; k < 3; ++k) {
      INFO("update " << update << ", micro-batch " << k);
      std::vector<std::int64_t> dims = shape.dims();
      dims[0] = rows[k];
      const Shape s(dims);
      const Tensor x = Tensor::randn(s, syncbn::testing::kSeed + 130 + static_cast<std::uint64_t>(10 * update + k),
                                     DType::Float32, test_device(), 1.0 + k, 2.0);
      const auto xv = x.to_vector<double>();
      const auto own = testing::ref::batch_norm(xv, std::vector<double>(xv.size(), 0.0), ones, zeros, rows[k], c, l, cfg);
      check_close(dp.forward(x), own.y, kFp32, "a micro-batch normalised by its own statistics");
      parts.push_back(xv);
      if (k < 2) {
        CHECK(layer->num_batches_tracked().item() == update - 1);
        CHECK(layer->accumulated() == k + 1);
      }
    }
    const auto all = concat(parts);
    const auto union_stats =
        testing::ref::batch_norm(all, std::vector<double>(all.size(), 0.0), ones, zeros, 18, c, l, cfg);
    testing::ref::update_running(rm, rv, union_stats, cfg, update);
    if (mode == nn::EmaUpdate::Deferred) {
      CHECK(layer->pending_running_updates() == 1);
      CHECK(nn::apply_running_updates(*model) == 1);
    }
    CHECK(layer->accumulated() == 0);
    CHECK(layer->num_batches_tracked().item() == update);
    check_close(layer->running_mean(), rm, kFp32, "running_mean from the union");
    check_close(layer->running_var(), rv, kFp32, "running_var from the union");
  }
}

TEST_CASE("accumulate_statistics refuses fewer than one micro-batch and changes nothing", "[nn][accumulate]") {
  nn::BatchNorm2d layer(3);
  layer.accumulate_statistics(2);
  CHECK_THROWS_MATCHES(layer.accumulate_statistics(0), InvalidArgument,
                       MessageIs("BatchNorm2d: accumulate_statistics: 0 micro-batches per update, expected >= 1"));
  CHECK(layer.accumulation() == 2);
  nn::Sequential model;
  CHECK_THROWS_MATCHES(nn::accumulate_statistics(model, -1), InvalidArgument,
                       MessageIs("accumulate_statistics: -1 micro-batches per update, expected >= 1"));
  CHECK(nn::accumulate_statistics(model, 2) == 0);
}
