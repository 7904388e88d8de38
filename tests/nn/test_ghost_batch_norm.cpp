// Ghost batch norm (BatchNormOptions::virtual_batch_size; tensorpack's
// virtual_batch_size) for BatchNorm and SyncBatchNorm 1d/2d/3d: every group
// of V consecutive samples normalised by its own statistics (float64
// reference per group), under SyncBatchNorm over the whole batch in replica
// order, with groups that span replicas and uneven and empty shards; V equal
// to the batch is plain synchronized batch norm; the running statistics
// follow the first group; a batch that V does not divide is refused with the
// numbers and changes nothing. Device-generic.

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <vector>

#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/replica_grads.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::check_close;
using syncbn::testing::make_batchnorm;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::take_grad_sum;
using syncbn::testing::test_devices;
using syncbn::testing::Tolerance;

namespace {

constexpr Tolerance kFp32{1e-5, 1e-5};

}  // namespace

TEST_CASE("Ghost batches are normalised by their own statistics, across replicas when synchronized",
          "[nn][ghost][threads]") {
  const Shape shape = GENERATE(Shape{12, 4}, Shape{12, 3, 2, 3}, Shape{12, 2, 2, 2, 3});
  // (sync, shards, V): per-replica on one device; synchronized with groups
  // spanning uneven and empty shards; V = the per-replica batch; V = the
  // whole batch (plain SyncBatchNorm).
  const auto [sync, split, v] = GENERATE(std::tuple{false, std::vector<std::int64_t>{12}, std::int64_t{3}},
                                         std::tuple{true, std::vector<std::int64_t>{2, 5, 0, 5}, std::int64_t{4}},
                                         std::tuple{true, std::vector<std::int64_t>{1, 1, 3, 1, 2, 2, 1, 1}, std::int64_t{6}},
                                         std::tuple{true, std::vector<std::int64_t>{4, 4, 4}, std::int64_t{4}},
                                         // replica 0 empty: the first group still reaches its state
                                         std::tuple{true, std::vector<std::int64_t>{0, 3, 5, 4}, std::int64_t{4}},
                                         std::tuple{true, std::vector<std::int64_t>{5, 7}, std::int64_t{12}});
  CAPTURE(shape, sync, split.size(), v, syncbn::testing::kSeed);
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape), row = c * l;
  nn::BatchNormOptions options;
  options.virtual_batch_size = v;
  options.device = test_device();
  auto layer = make_batchnorm(sync, syncbn::testing::spatial_dims_of(shape), c, options);
  layer->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 140, DType::Float32, test_device(), 1.0, 0.5));
  layer->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 141, DType::Float32, test_device()));
  const auto w = layer->weight().value.to_vector<double>(), b = layer->bias().value.to_vector<double>();
  const testing::ref::BnConfig cfg{1e-5, 0.1, false};
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);

  const auto devices = test_devices(static_cast<int>(split.size()));
  auto replicas = parallel::replicate(*layer, devices);
  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 150 + static_cast<std::uint64_t>(step),
                                   DType::Float32, test_device(), 1.0, 2.0);
    const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 160 + static_cast<std::uint64_t>(step),
                                    DType::Float32, test_device());
    const auto xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
    std::vector<double> y, dx, dweight(static_cast<std::size_t>(c), 0.0), dbias(static_cast<std::size_t>(c), 0.0);
    testing::ref::BnResult first;
    for (std::int64_t g = 0; g < n / v; ++g) {
      const auto r = testing::ref::batch_norm(testing::ref::rows_of(xv, g * v, v, row),
                                              testing::ref::rows_of(dyv, g * v, v, row), w, b, v, c, l, cfg);
      y.insert(y.end(), r.y.begin(), r.y.end());
      dx.insert(dx.end(), r.dx.begin(), r.dx.end());
      for (std::size_t j = 0; j < dweight.size(); ++j) dweight[j] += r.dweight[j], dbias[j] += r.dbias[j];
      if (g == 0) first = r;
    }
    const auto outputs = parallel::parallel_apply(replicas, parallel::scatter(x, devices, split));
    const auto grads = parallel::parallel_backward(replicas, parallel::scatter(dy, devices, split));
    check_close(parallel::gather(outputs, test_device()), y, kFp32, "output");
    check_close(parallel::gather(grads, test_device()), dx, kFp32, "grad_input");
    check_close(take_grad_sum(replicas, 0), dweight, kFp32, "grad_weight summed over replicas");
    check_close(take_grad_sum(replicas, 1), dbias, kFp32, "grad_bias summed over replicas");
    if (v == n) {
      const auto whole = testing::ref::batch_norm(xv, dyv, w, b, n, c, l, cfg);
      check_close(parallel::gather(outputs, test_device()), whole.y, kFp32, "V = the batch: plain batch norm");
    }
    // The running statistics follow the first ghost batch (tensorpack).
    testing::ref::update_running(rm, rv, first, cfg, step);
    check_close(layer->running_mean(), rm, kFp32, "running_mean");
    check_close(layer->running_var(), rv, kFp32, "running_var");
    replicas = parallel::replicate(*layer, devices);
  }
}

TEST_CASE("A batch that virtual_batch_size does not divide is refused with the numbers, changing nothing",
          "[nn][ghost][threads]") {
  nn::BatchNormOptions options;
  options.virtual_batch_size = 4;
  options.device = test_device();
  nn::BatchNorm2d plain(2, options);
  const Tensor x = Tensor::randn(Shape{6, 2, 2, 2}, syncbn::testing::kSeed + 170, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(plain.forward(x), InvalidArgument,
                       MessageIs("BatchNorm2d: a batch of 6 samples is not a multiple of virtual_batch_size 4, "
                                 "expected a multiple"));
  CHECK(plain.num_batches_tracked().item() == 0);

  nn::SyncBatchNorm2d layer(2, options, 2s);
  const auto devices = test_devices(2);
  auto replicas = parallel::replicate(layer, devices);
  // 3 + 3 rows: each shard would do, the whole batch of 6 does not.
  CHECK_THROWS_MATCHES(parallel::parallel_apply(replicas, parallel::scatter(x, devices, {3, 3})), Error,
                       MessageContains("a batch of 6 samples is not a multiple of virtual_batch_size 4"));
  CHECK(layer.num_batches_tracked().item() == 0);
}

namespace {

// A BatchNorm2d or SyncBatchNorm2d of 4 channels in ghost batches of 3.
std::shared_ptr<nn::BatchNorm> ghost_layer(bool sync) {
  nn::BatchNormOptions options;
  options.virtual_batch_size = 3;
  options.device = test_device();
  return make_batchnorm(sync, 2, 4, options);
}

}  // namespace

TEST_CASE("A refused ghost batch keeps the previous forward for its backward", "[nn][ghost]") {
  const bool sync = GENERATE(false, true);
  CAPTURE(sync, syncbn::testing::kSeed);
  auto layer = ghost_layer(sync);
  auto twin = ghost_layer(sync);  // the same steps without the refused forward
  const Tensor x = Tensor::randn(Shape{6, 4, 2, 2}, syncbn::testing::kSeed + 180, DType::Float32, test_device());
  const Tensor dy = Tensor::randn(Shape{6, 4, 2, 2}, syncbn::testing::kSeed + 181, DType::Float32, test_device());
  layer->forward(x);
  twin->forward(x);
  const Tensor refused = Tensor::randn(Shape{8, 4, 2, 2}, syncbn::testing::kSeed + 182, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(layer->forward(refused), InvalidArgument,
                       MessageContains("a batch of 8 samples is not a multiple of virtual_batch_size 3"));
  const Tensor dx = layer->backward(dy);
  check_close(dx, twin->backward(dy).to_vector<double>(), Tolerance{0, 0}, "grad_input of the forward before");
  check_close(layer->weight().grad, twin->weight().grad.to_vector<double>(), Tolerance{0, 0}, "grad_weight");
  CHECK(layer->num_batches_tracked().item() == 1);
}

TEST_CASE("A refused ghost batch without an earlier forward leaves no forward to differentiate", "[nn][ghost]") {
  const bool sync = GENERATE(false, true);
  CAPTURE(sync, syncbn::testing::kSeed);
  auto layer = ghost_layer(sync);
  const Tensor refused = Tensor::randn(Shape{8, 4, 2, 2}, syncbn::testing::kSeed + 183, DType::Float32, test_device());
  CHECK_THROWS_AS(layer->forward(refused), InvalidArgument);
  CHECK_THROWS_MATCHES(layer->backward(Tensor::ones(Shape{6, 4, 2, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageContains("backward called without a forward"));
  CHECK(layer->num_batches_tracked().item() == 0);
}

TEST_CASE("virtual_batch_size option errors", "[nn][ghost]") {
  nn::BatchNormOptions options;
  options.virtual_batch_size = -2;
  CHECK_THROWS_MATCHES(nn::BatchNorm1d(3, options), InvalidArgument,
                       MessageIs("BatchNorm1d: virtual_batch_size -2, expected >= 0 (0: off)"));
  options.virtual_batch_size = 2;
  options.freeze = true;
  CHECK_THROWS_MATCHES(nn::BatchNorm1d(3, options), InvalidArgument,
                       MessageIs("BatchNorm1d: virtual_batch_size normalises with ghost batches' statistics, expected "
                                 "freeze = false and no renorm"));
  options.freeze = false;
  CHECK(nn::BatchNorm1d(3, options).describe() ==
        "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true, virtual_batch_size=2)");
}
