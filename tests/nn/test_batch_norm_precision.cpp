// Float32 batch norm within 1e-5 of a float64 reference (relative to
// max(1, |reference|)) in the cases where float32 arithmetic loses digits
// (docs/numerics.md): eval with a mean far larger than the spread (the
// input's digits below the mean's are all that is left), a training batch
// with a tiny spread and a mean(dy) far from 0 (dx is a difference of
// nearly equal terms), |mean| = 1e4 x std, and parameter gradients summed
// from 8 replicas of 16k values per channel each. The reference takes the
// very float32 values (input, running statistics, parameters) in float64.
// At every CPU level.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "support/batch_norm_spec.hpp"
#include "support/batch_norm_layers.hpp"
#include "support/device_under_test.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::kSeed;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;

namespace {

// One family of cases (shape, replicas, mode, data).
struct Family {
  const char* name;
  Shape shape;  // the whole batch
  int devices;
  bool training;
  double x_mean, x_std, dy_mean;
};

// The largest |got - want| / max(1, |want|).
double worst_error(const std::vector<double>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(got[i] - want[i]) / std::max(1.0, std::abs(want[i])));
  return worst;
}

void check_within(const char* what, const std::vector<double>& got, const std::vector<double>& want) {
  const double error = worst_error(got, want);
  INFO(what << ": worst error " << error << " of max(1, |reference|)");
  CHECK(error <= 1e-5);
}

}  // namespace

TEST_CASE("Float32 batch norm stays within 1e-5 of float64 where float32 arithmetic cancels", "[nn][levels]") {
  const Family family = GENERATE(
      Family{"eval, mean -100 and spread 0.01", Shape{45, 16}, 1, false, -100.0, 0.01, 0.65},
      Family{"eval, mean -100 and spread 0.01, 2 replicas", Shape{16, 8, 3, 3}, 2, false, -100.0, 0.01, 0.65},
      Family{"eval, |mean| = 1e4 x std", Shape{16, 8, 3, 3}, 1, false, 300.0, 0.03, 0.4},
      Family{"training, spread 1e-4 and mean(dy) 0.65, 45 rows", Shape{45, 16}, 1, true, 0.5, 1e-4, 0.65},
      Family{"training, |mean| = 1e4 x std", Shape{24, 8, 3, 3}, 3, true, -300.0, 0.03, 0.65},
      Family{"training, 8 replicas of (64, 64, 16, 16)", Shape{512, 64, 16, 16}, 8, true, 0.3, 1.0, 0.65});
  const std::int64_t n = family.shape[0], c = family.shape[1], l = syncbn::testing::spatial_size(family.shape);
  CAPTURE(family.name, kSeed);

  const nn::BatchNormOptions options{.device = test_device()};
  auto layer = syncbn::testing::make_batchnorm(true, syncbn::testing::spatial_dims_of(family.shape), c, options);
  layer->weight().value.copy_(Tensor::randn(Shape{c}, kSeed + 400, DType::Float32, test_device(), 1.0, 0.5));
  layer->bias().value.copy_(Tensor::randn(Shape{c}, kSeed + 401, DType::Float32, test_device()));
  // Running statistics near the data's (what training would have left).
  layer->running_mean().copy_(
      Tensor::randn(Shape{c}, kSeed + 402, DType::Float32, test_device(), family.x_mean, family.x_std * 0.3));
  const Tensor rv = Tensor::rand(Shape{c}, kSeed + 403, DType::Float32, test_device(), 0.5, 1.5);
  layer->running_var().copy_(Tensor::from_vector(
      [&] {
        std::vector<double> v = rv.to_vector<double>();
        for (double& e : v) e *= family.x_std * family.x_std;
        return v;
      }(),
      Shape{c}, test_device()).to(DType::Float32));
  layer->train(family.training);
  const Tensor x = Tensor::randn(family.shape, kSeed + 404, DType::Float32, test_device(), family.x_mean, family.x_std);
  const Tensor dy = Tensor::randn(family.shape, kSeed + 405, DType::Float32, test_device(), family.dy_mean, 1.0);

  // The float64 reference of the same float32 values.
  const auto xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
  const auto w = layer->weight().value.to_vector<double>(), b = layer->bias().value.to_vector<double>();
  const auto rm = layer->running_mean().to_vector<double>(), rvv = layer->running_var().to_vector<double>();
  namespace spec = syncbn::testing::spec;
  std::vector<double> y, dx, dw(static_cast<std::size_t>(c), 0.0), db(static_cast<std::size_t>(c), 0.0);
  if (family.training) {
    const auto r = syncbn::testing::ref::batch_norm(xv, dyv, w, b, n, c, l, {});
    y = r.y, dx = r.dx, dw = r.dweight, db = r.dbias;
  } else {
    // Running statistics are constants: dx = dy * w * invstd.
    std::vector<double> invstd;
    for (const double v : rvv) invstd.push_back(spec::invstd_of(v, 1e-5, false));
    y = spec::apply(xv, n, c, l, rm, invstd, w, b);
    const spec::GradSums g = spec::grad_sums(dyv, xv, n, c, l, rm);
    spec::param_grads(dw, db, invstd, g, g, 0);
    dx = spec::backward_apply(dyv, xv, n, c, l, rm, invstd, w, g, 0, std::vector<bool>(static_cast<std::size_t>(c), false));
  }

  parallel::DataParallel dp(layer, test_devices(family.devices), std::nullopt, {syncbn::testing::test_on_cuda()});
  const Tensor got_y = dp.forward(x);
  const Tensor got_dx = dp.backward(dy);
  check_within("output", got_y.to_vector<double>(), y);
  check_within("grad_input", got_dx.to_vector<double>(), dx);
  check_within("grad_weight", layer->weight().grad.to_vector<double>(), dw);
  check_within("grad_bias", layer->bias().grad.to_vector<double>(), db);
}
