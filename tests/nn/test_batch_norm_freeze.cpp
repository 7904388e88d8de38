// freeze (MegEngine's semantics) for BatchNorm and SyncBatchNorm 1d/2d/3d:
// in training the layer normalises with the running statistics, changes none
// of them, gives its affine parameters no gradient and returns the frozen
// affine map's grad_input (float64 reference), for K = 1..8 replicas on
// uneven shards; a frozen SyncBatchNorm never waits for another replica; and
// freeze without running statistics is refused. Device-generic.

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <memory>
#include <vector>

#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::check_close;
using syncbn::testing::make_batchnorm;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;
using syncbn::testing::Tolerance;

namespace {

constexpr Tolerance kFp32{1e-5, 1e-5};

}  // namespace

TEST_CASE("A frozen batch norm trains with its running statistics and changes none of its state",
          "[nn][freeze][threads]") {
  const Shape shape = GENERATE(Shape{11, 5}, Shape{11, 3, 2, 3}, Shape{11, 2, 2, 2, 3});
  const bool sync = GENERATE(false, true);
  const std::vector<std::int64_t> split = GENERATE(std::vector<std::int64_t>{11}, std::vector<std::int64_t>{4, 7},
                                                   std::vector<std::int64_t>{0, 3, 1, 2, 0, 2, 2, 1});
  CAPTURE(shape, sync, split.size(), syncbn::testing::kSeed);
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape);
  nn::BatchNormOptions options;
  options.freeze = true;
  options.device = test_device();
  auto layer = make_batchnorm(sync, syncbn::testing::spatial_dims_of(shape), c, options);
  // Running statistics and affine parameters of a trained layer.
  layer->running_mean().copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 80, DType::Float32, test_device()));
  layer->running_var().copy_(
      Tensor::randn(Shape{c}, syncbn::testing::kSeed + 81, DType::Float32, test_device(), 2.0, 0.3));
  layer->num_batches_tracked().fill_(5);
  layer->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 82, DType::Float32, test_device(), 1.0, 0.5));
  layer->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 83, DType::Float32, test_device()));
  const auto rm = layer->running_mean().to_vector<double>(), rv = layer->running_var().to_vector<double>();
  const auto wv = layer->weight().value.to_vector<double>(), bv = layer->bias().value.to_vector<double>();
  REQUIRE(layer->is_training());

  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 84, DType::Float32, test_device(), 3.0, 2.0);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 85, DType::Float32, test_device());
  const auto devices = test_devices(static_cast<int>(split.size()));
  auto replicas = parallel::replicate(*layer, devices);
  const auto outputs = parallel::parallel_apply(replicas, parallel::scatter(x, devices, split));
  const auto grads = parallel::parallel_backward(replicas, parallel::scatter(dy, devices, split));

  const testing::ref::BnConfig cfg{1e-5, 0.1, false};
  const auto xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
  check_close(parallel::gather(outputs, test_device()), testing::ref::batch_norm_eval(xv, wv, bv, rm, rv, n, c, l, cfg),
              kFp32, "output: the running statistics' normalisation");
  // The frozen affine map: dx = dy * weight / sqrt(running_var + eps).
  std::vector<double> dx(dyv.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      for (std::int64_t k = 0; k < l; ++k) {
        const auto at = static_cast<std::size_t>((i * c + j) * l + k);
        dx[at] = dyv[at] * wv[static_cast<std::size_t>(j)] / std::sqrt(rv[static_cast<std::size_t>(j)] + 1e-5);
      }
  check_close(parallel::gather(grads, test_device()), dx, kFp32, "grad_input");
  for (std::size_t k = 0; k < replicas.size(); ++k) {
    INFO("replica " << k);
    CHECK(replicas[k].parameters()[0]->grad.to_vector<double>() == std::vector<double>(static_cast<std::size_t>(c), 0.0));
    CHECK(replicas[k].parameters()[1]->grad.to_vector<double>() == std::vector<double>(static_cast<std::size_t>(c), 0.0));
  }
  CHECK(layer->running_mean().to_vector<double>() == rm);
  CHECK(layer->running_var().to_vector<double>() == rv);
  CHECK(layer->num_batches_tracked().item() == 5);
}

TEST_CASE("A frozen SyncBatchNorm never waits for the other replicas", "[nn][freeze][threads]") {
  nn::BatchNormOptions options;
  options.freeze = true;
  options.device = test_device();
  nn::SyncBatchNorm1d layer(3, options, 50ms);
  const auto devices = test_devices(2);
  auto replicas = parallel::replicate(layer, devices);
  // Replica 1 alone: a synchronizing layer would time out waiting for replica 0.
  const Tensor x = Tensor::randn(Shape{4, 3}, syncbn::testing::kSeed + 86, DType::Float32, devices[1]);
  const Tensor y = replicas[1].forward(x);
  CHECK(y.shape() == x.shape());
  CHECK_NOTHROW(replicas[1].backward(Tensor::ones(Shape{4, 3}, DType::Float32, devices[1])));
}

TEST_CASE("freeze without running statistics is refused", "[nn][freeze]") {
  nn::BatchNormOptions options;
  options.freeze = true;
  options.track_running_stats = false;
  CHECK_THROWS_MATCHES(nn::BatchNorm2d(4, options), InvalidArgument,
                       MessageIs("BatchNorm2d: freeze needs running statistics to normalise with, expected "
                                 "track_running_stats = true, got false"));
  CHECK_THROWS_MATCHES(nn::SyncBatchNorm3d(4, options), InvalidArgument,
                       MessageIs("SyncBatchNorm3d: freeze needs running statistics to normalise with, expected "
                                 "track_running_stats = true, got false"));
  options.track_running_stats = true;
  CHECK(nn::BatchNorm1d(2, options).describe() ==
        "BatchNorm1d(2, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true, freeze=true)");
}
