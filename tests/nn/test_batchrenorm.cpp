// Batch Renormalization (BatchNormOptions::renorm; Ioffe 2017, tensorpack's
// BatchRenorm) for BatchNorm and SyncBatchNorm 1d/2d/3d: against a float64
// reference written from the definition, with r and d clipped for some
// channels and not for others, over 1 to 8 replicas with uneven and empty
// shards (SyncBatchNorm: r and d from the whole batch); rmax = 1 and dmax = 0
// is plain batch norm; limits set on the module reach its replicas; option
// errors change nothing. Device-generic.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
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
using syncbn::testing::check_close;
using syncbn::testing::make_batchnorm;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::take_grad_sum;
using syncbn::testing::test_devices;
using syncbn::testing::Tolerance;

namespace {

constexpr Tolerance kFp32{1e-5, 1e-5};

}  // namespace

TEST_CASE("Batch renormalization matches its definition, and is batch norm with rmax 1 and dmax 0",
          "[nn][renorm][threads]") {
  const Shape shape = GENERATE(Shape{13, 5}, Shape{13, 3, 2, 3}, Shape{13, 2, 2, 2, 3});
  const auto [sync, split] = GENERATE(std::pair{false, std::vector<std::int64_t>{13}},
                                      std::pair{true, std::vector<std::int64_t>{13}},
                                      std::pair{true, std::vector<std::int64_t>{6, 7}},
                                      std::pair{true, std::vector<std::int64_t>{0, 4, 0, 4, 1, 1, 2, 1}});
  const nn::RenormLimits limits = GENERATE(nn::RenormLimits{1.0, 0.0}, nn::RenormLimits{1.5, 0.4});
  CAPTURE(shape, sync, split.size(), limits.rmax, limits.dmax, syncbn::testing::kSeed);
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape);
  nn::BatchNormOptions options;
  options.renorm = limits;
  options.device = test_device();
  auto layer = make_batchnorm(sync, syncbn::testing::spatial_dims_of(shape), c, options);
  layer->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 100, DType::Float32, test_device(), 1.0, 0.5));
  layer->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 101, DType::Float32, test_device()));
  // Running statistics far enough from the batch's that some r and d clip.
  layer->running_mean().copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 102, DType::Float32, test_device(), 3.0, 0.5));
  layer->running_var().copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 103, DType::Float32, test_device(), 4.0, 1.5));
  const auto w = layer->weight().value.to_vector<double>(), b = layer->bias().value.to_vector<double>();
  std::vector<double> rm = layer->running_mean().to_vector<double>(), rv = layer->running_var().to_vector<double>();
  for (double& v : rv) v = std::abs(v);
  layer->running_var().copy_(Tensor::from_vector(rv, Shape{c}, test_device()).to(DType::Float32));
  rv = layer->running_var().to_vector<double>();

  const auto devices = test_devices(static_cast<int>(split.size()));
  auto replicas = parallel::replicate(*layer, devices);
  const testing::ref::BnConfig cfg{1e-5, 0.1, false};
  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 110 + static_cast<std::uint64_t>(step),
                                   DType::Float32, test_device(), 3.0, 2.0);
    const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 120 + static_cast<std::uint64_t>(step),
                                    DType::Float32, test_device());
    const auto xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
    // The definition: x_hat from the batch's statistics, r and d from the
    // running ones before this batch's update, clipped; then batch norm with
    // weight w r and bias w d + b, and dw = r sum(dy x_hat) + d sum(dy).
    const auto plain = testing::ref::batch_norm(xv, dyv, w, b, n, c, l, cfg);
    std::vector<double> w_eff(static_cast<std::size_t>(c)), b_eff(static_cast<std::size_t>(c)), r(w_eff.size()),
        d(w_eff.size());
    for (std::size_t j = 0; j < w_eff.size(); ++j) {
      const double sigma_b = std::sqrt(plain.var_biased[j] + cfg.eps), sigma = std::sqrt(rv[j] + cfg.eps);
      r[j] = std::clamp(sigma_b / sigma, 1.0 / limits.rmax, limits.rmax);
      d[j] = std::clamp((plain.mean[j] - rm[j]) / sigma, -limits.dmax, limits.dmax);
      w_eff[j] = w[j] * r[j];
      b_eff[j] = w[j] * d[j] + b[j];
    }
    const auto want = testing::ref::batch_norm(xv, dyv, w_eff, b_eff, n, c, l, cfg);
    std::vector<double> dweight(w_eff.size());
    for (std::size_t j = 0; j < w_eff.size(); ++j) dweight[j] = r[j] * want.dweight[j] + d[j] * want.dbias[j];

    const auto outputs = parallel::parallel_apply(replicas, parallel::scatter(x, devices, split));
    const auto grads = parallel::parallel_backward(replicas, parallel::scatter(dy, devices, split));
    check_close(parallel::gather(outputs, test_device()), want.y, kFp32, "output");
    check_close(parallel::gather(grads, test_device()), want.dx, kFp32, "grad_input");
    check_close(take_grad_sum(replicas, 0), dweight, kFp32, "grad_weight");
    check_close(take_grad_sum(replicas, 1), want.dbias, kFp32, "grad_bias");
    if (limits.rmax == 1.0 && limits.dmax == 0.0) {
      check_close(parallel::gather(outputs, test_device()), plain.y, kFp32, "output: plain batch norm");
      check_close(parallel::gather(grads, test_device()), plain.dx, kFp32, "grad_input: plain batch norm");
    }
    // The running statistics move as batch norm's.
    testing::ref::update_running(rm, rv, plain, cfg, step);
    check_close(layer->running_mean(), rm, kFp32, "running_mean");
    check_close(layer->running_var(), rv, kFp32, "running_var");
    rm = layer->running_mean().to_vector<double>();
    rv = layer->running_var().to_vector<double>();
    replicas = parallel::replicate(*layer, devices);  // the other copies take the new running statistics
  }
}

TEST_CASE("Renorm limits set on a module reach its replicas; bad limits and combinations are refused",
          "[nn][renorm][threads]") {
  nn::BatchNormOptions options;
  options.renorm = nn::RenormLimits{1.0, 0.0};
  options.device = test_device();
  nn::SyncBatchNorm1d layer(3, options);
  auto replicas = parallel::replicate(layer, test_devices(2));
  layer.set_renorm_limits({2.0, 1.0});
  REQUIRE(layer.renorm_limits().has_value());
  for (std::size_t k = 0; k < replicas.size(); ++k) {
    auto& copy = dynamic_cast<nn::SyncBatchNorm1d&>(replicas[k]);
    CHECK(copy.renorm_limits()->rmax == 2.0);
    CHECK(copy.renorm_limits()->dmax == 1.0);
  }
  CHECK(layer.describe() ==
        "SyncBatchNorm1d(3, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true, renorm(rmax=2, dmax=1))");
  CHECK_THROWS_MATCHES(layer.set_renorm_limits({0.5, 1.0}), InvalidArgument,
                       MessageIs("SyncBatchNorm1d: set_renorm_limits: rmax 0.5, dmax 1, expected rmax >= 1 and dmax >= 0"));
  CHECK(layer.renorm_limits()->rmax == 2.0);
  nn::BatchNorm2d plain(3);
  CHECK_FALSE(plain.renorm_limits().has_value());
  CHECK_THROWS_MATCHES(plain.set_renorm_limits({1.0, 0.0}), InvalidArgument,
                       MessageIs("BatchNorm2d: set_renorm_limits on a layer without renorm, expected "
                                 "BatchNormOptions::renorm set at construction"));
  nn::BatchNormOptions bad;
  bad.renorm = nn::RenormLimits{1.0, -1.0};
  CHECK_THROWS_MATCHES(nn::BatchNorm1d(2, bad), InvalidArgument,
                       MessageIs("BatchNorm1d: renorm limits rmax 1, dmax -1, expected rmax >= 1 and dmax >= 0"));
  bad.renorm = nn::RenormLimits{};
  bad.track_running_stats = false;
  CHECK_THROWS_MATCHES(nn::BatchNorm1d(2, bad), InvalidArgument,
                       MessageIs("BatchNorm1d: renorm corrects the batch's statistics towards the running ones, "
                                 "expected track_running_stats = true and freeze = false"));
}
