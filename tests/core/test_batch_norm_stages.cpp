// The batch-norm stages of core (syncbn/core/batch_norm.hpp) against their
// specification (support/batch_norm_spec.hpp), stage by stage, for every
// input dtype and for shapes that take each path of the tuned kernels: (N, C)
// rows with vector blocks, odd widths and many rows; (N, C, L) runs shorter
// and longer than a vector and than the 16-bit staging chunk; single rows and
// empty shards. Device-generic: the CPU test binaries run it at every CPU
// level (SYNCBN_CPU_CAPABILITY), the CUDA binary on cuda:0. Tolerances are
// those of docs/numerics.md.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "support/batch_norm_spec.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
namespace spec = syncbn::testing::spec;
using spec::Vec;
using syncbn::testing::kSeed;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

struct Case {
  std::int64_t n, c, l;
};

std::ostream& operator<<(std::ostream& os, const Case& s) { return os << "(" << s.n << ", " << s.c << ", " << s.l << ")"; }

// Accuracy of a stage's result (docs/numerics.md): |got - want| must be within
// out * |want| + out_abs (the rounding of the result to its dtype, whose
// subnormals have a fixed step) plus op * scale (the arithmetic, relative to
// the magnitude of its operands).
struct Accuracy {
  double out;
  double op;
  double out_abs = 0.0;
};

// The element-wise stages compute float32 (float64 for float64 input) and
// round the result to the input's dtype.
Accuracy elementwise_accuracy(DType dtype) {
  switch (dtype) {
    case DType::Float64: return {0.0, 1e-12};
    case DType::Float16: return {std::ldexp(1.0, -11), 1e-5, std::ldexp(1.0, -25)};
    case DType::BFloat16: return {std::ldexp(1.0, -8), 1e-5};
    default: return {0.0, 1e-5};
  }
}

// The reductions accumulate in float64 (float64 input) or in float32 lanes
// flushed into float64 every 32 values (the others); results are float64.
Accuracy reduction_accuracy(DType dtype) { return dtype == DType::Float64 ? Accuracy{0.0, 1e-11} : Accuracy{0.0, 1e-5}; }

void check_within(const std::vector<double>& got, const Vec& want, const Vec& scale, Accuracy acc,
                  const std::string& what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double allowed = acc.out * std::abs(want[i]) + acc.out_abs + acc.op * scale[i] + 1e-300;
    if (!(std::abs(got[i] - want[i]) <= allowed)) {
      INFO("first mismatch at index " << i << " of " << got.size() << ": got " << got[i] << ", expected " << want[i]
                                      << ", allowed difference " << allowed);
      CHECK(std::abs(got[i] - want[i]) <= allowed);
      return;
    }
  }
}

// A shape's input: spread 3 around `center`, rounded to dtype (the spec
// reads the rounded values). Centers far from zero relative to the spread
// make naive sums of squares cancel and a float32 mean lose digits (the
// numerics the kernels are built for, docs/numerics.md).
Tensor input(const Case& s, DType dtype, std::uint64_t seed, double center) {
  return Tensor::randn(Shape{s.n, s.c, s.l}, seed, dtype, test_device(), center, 3.0);
}

// Calls fn(at, u) for every element of the (n, c, l) array of a case: its
// index and its channel.
template <class Fn>
void for_each_element(const Case& s, Fn&& fn) {
  for (std::int64_t i = 0; i < s.n; ++i)
    for (std::int64_t j = 0; j < s.c; ++j)
      for (std::int64_t k = 0; k < s.l; ++k) fn(spec::at(s.c, s.l, i, j, k), static_cast<std::size_t>(j));
}

Tensor channel_values(const Vec& v) { return Tensor::from_vector(v, Shape{static_cast<std::int64_t>(v.size())}, test_device()); }

const Case kCases[] = {
    {37, 5, 29},   // (N, C, L): runs shorter than the vector blocks' sweep
    {4, 3, 1000},  // long runs: several float32 flush periods per row
    {5, 3, 1500},  // runs longer than the 16-bit staging chunk
    {103, 77, 1},  // (N, C): 4-vector blocks, a 1-vector block, odd channels
    {8, 1024, 1},  // (N, C): wide and short
    {37, 1100, 1}, // (N, C): rows wider than the 16-bit staging chunk
    {70, 37, 1},   // (N, C): more rows than a flush period
    {1, 4, 1},     // one value per channel
    {1, 6, 7},     // one sample
    {0, 6, 3},     // an empty shard
};

}  // namespace

TEST_CASE("Batch-norm moments, variance and running statistics match the specification", "[core][batchnorm][levels]") {
  const Case s = GENERATE(from_range(std::begin(kCases), std::end(kCases)));
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::BFloat16);
  const bool clamp = GENERATE(false, true);
  const double center = GENERATE(50.0, 1e4);
  CAPTURE(kSeed, s, dtype, clamp, center, test_device());
  const Tensor x = input(s, dtype, kSeed, center);
  const Vec xs = x.to_vector<double>();

  // Stage 1: moments of a shard.
  const core::ChannelMoments got = core::batch_norm_moments(x);
  const spec::Moments want = spec::moments(xs, s.n, s.c, s.l);
  CHECK(got.count == want.count);
  Vec mean_scale, m2_scale;
  for (std::int64_t j = 0; j < s.c; ++j) {
    mean_scale.push_back(std::abs(want.mean[static_cast<std::size_t>(j)]) + 3.0);
    m2_scale.push_back(want.m2[static_cast<std::size_t>(j)] + static_cast<double>(want.count));
  }
  check_within(got.mean.to_vector<double>(), want.mean, mean_scale, reduction_accuracy(dtype), "mean");
  check_within(got.m2.to_vector<double>(), want.m2, m2_scale, reduction_accuracy(dtype), "m2");

  // Stage 2: merging two shards (the first split 1 : 2) in order.
  const std::int64_t cut = s.n / 3;
  const std::vector<core::ChannelMoments> parts{core::batch_norm_moments(x.rows(0, cut)),
                                                core::batch_norm_moments(x.rows(cut, s.n))};
  const core::ChannelMoments merged = core::merge_moments(parts, test_device());
  const std::vector<double> x_first(xs.begin(), xs.begin() + static_cast<std::ptrdiff_t>(cut * s.c * s.l));
  const std::vector<double> x_rest(xs.begin() + static_cast<std::ptrdiff_t>(cut * s.c * s.l), xs.end());
  const spec::Moments want_merged = spec::merge(
      {spec::moments(x_first, cut, s.c, s.l), spec::moments(x_rest, s.n - cut, s.c, s.l)});
  CHECK(merged.count == want_merged.count);
  check_within(merged.mean.to_vector<double>(), want_merged.mean, mean_scale, reduction_accuracy(dtype), "merged mean");
  check_within(merged.m2.to_vector<double>(), want_merged.m2, m2_scale, reduction_accuracy(dtype), "merged m2");

  // Stage 3: invstd and the unbiased variance, from the spec's own moments.
  const double eps = 1e-5;
  core::ChannelMoments exact{want.count, channel_values(want.mean), channel_values(want.m2)};
  const core::BatchNormVariance var = core::batch_norm_variance(exact, eps, clamp);
  const spec::Variance want_var = spec::variance(want, eps, clamp);
  const Accuracy float64_math{0.0, 1e-14};
  check_within(var.invstd.to_vector<double>(), want_var.invstd, want_var.invstd, float64_math, "invstd");
  check_within(var.unbiased_var.to_vector<double>(), want_var.unbiased_var, want_var.unbiased_var, float64_math,
               "unbiased variance");

  // The running statistics, momentum and cumulative.
  const DType param = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  for (const std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    CAPTURE(momentum.value_or(-1));
    Vec rm(static_cast<std::size_t>(s.c), 0.5), rv(static_cast<std::size_t>(s.c), 2.0);
    std::int64_t batches = 3;
    const Tensor running_mean = Tensor::full(Shape{s.c}, 0.5, param, test_device());
    const Tensor running_var = Tensor::full(Shape{s.c}, 2.0, param, test_device());
    const Tensor tracked = Tensor::full(Shape{}, 3.0, DType::Int64, test_device());
    core::update_running_stats(running_mean, running_var, tracked, exact.mean, var.unbiased_var, momentum);
    spec::update_running(rm, rv, batches, want.mean, want_var.unbiased_var, momentum);
    const Accuracy stored{param == DType::Float64 ? 1e-15 : std::ldexp(1.0, -24), 0.0};
    check_within(running_mean.to_vector<double>(), rm, rm, stored, "running mean");
    check_within(running_var.to_vector<double>(), rv, rv, stored, "running variance");
    CHECK(tracked.item() == static_cast<double>(batches));
  }
}

TEST_CASE("Batch-norm apply, gradient sums and backward match the specification", "[core][batchnorm][levels]") {
  const Case s = GENERATE(from_range(std::begin(kCases), std::end(kCases)));
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::BFloat16);
  const bool affine = GENERATE(true, false);
  const bool eval = GENERATE(false, true);  // eval: constant statistics, count 0 in the backward
  const double center = GENERATE(50.0, 1e4);
  CAPTURE(kSeed, s, dtype, affine, eval, center, test_device());
  const DType param = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  const Tensor x = input(s, dtype, kSeed + 1, center);
  const Tensor dy = Tensor::randn(x.shape(), kSeed + 2, dtype, test_device(), 0.2, 1.0);
  const Vec xs = x.to_vector<double>(), dys = dy.to_vector<double>();

  // Statistics near the data's, exactly representable in float64.
  Vec mean, invstd, weight, bias;
  for (std::int64_t j = 0; j < s.c; ++j) {
    mean.push_back(center + 0.01 * static_cast<double>(j % 7));
    invstd.push_back(1.0 / (3.0 + 0.1 * static_cast<double>(j % 5)));
    if (affine) {
      weight.push_back(static_cast<float>(0.5 + 0.25 * static_cast<double>(j % 3)));
      bias.push_back(static_cast<float>(-1.0 + 0.5 * static_cast<double>(j % 4)));
    }
  }
  const auto param_tensor = [&](const Vec& v) {
    return v.empty() ? Tensor() : Tensor::from_vector(v, Shape{s.c}, test_device()).to(param);
  };
  const Tensor w = param_tensor(weight), b = param_tensor(bias);
  const Tensor coef = core::batch_norm_coefficients(channel_values(mean), channel_values(invstd), w, b, param);

  // Stage 4: apply.
  {
    const Vec want = spec::apply(xs, s.n, s.c, s.l, mean, invstd, weight, bias);
    Vec scale(want.size());
    for_each_element(s, [&](std::size_t at, std::size_t u) {
      const double wj = affine ? std::abs(weight[u]) : 1.0, bj = affine ? std::abs(bias[u]) : 0.0;
      scale[at] = std::abs(xs[at] - mean[u]) * invstd[u] * wj + bj;
    });
    const Tensor y = core::batch_norm_apply(x, coef);
    CHECK(y.dtype() == dtype);
    check_within(y.to_vector<double>(), want, scale, elementwise_accuracy(dtype), "y");
  }

  // Stage 5: gradient sums of the shard.
  const spec::GradSums want_sums = spec::grad_sums(dys, xs, s.n, s.c, s.l, mean);
  {
    const core::ChannelGradSums sums = core::batch_norm_grad_sums(dy, x, coef);
    Vec dy_scale(static_cast<std::size_t>(s.c), 0.0), xmu_scale(static_cast<std::size_t>(s.c), 0.0);
    Vec x_scale(static_cast<std::size_t>(s.c), 0.0);
    for_each_element(s, [&](std::size_t at, std::size_t u) {
      dy_scale[u] += std::abs(dys[at]);
      xmu_scale[u] += std::abs(dys[at] * (xs[at] - mean[u]));
      x_scale[u] += std::abs(xs[at] - mean[u]);
    });
    check_within(sums.sum_dy.to_vector<double>(), want_sums.sum_dy, dy_scale, reduction_accuracy(dtype), "sum_dy");
    check_within(sums.sum_dy_xmu.to_vector<double>(), want_sums.sum_dy_xmu, xmu_scale, reduction_accuracy(dtype),
                 "sum_dy_xmu");
    check_within(sums.sum_xmu.to_vector<double>(), want_sums.sum_xmu, x_scale, reduction_accuracy(dtype), "sum_xmu");
  }

  // Stage 6: dx from sums over a batch of 3 such shards (the count a
  // synchronized layer would see), or from constant statistics; the
  // batch's exact mean off the coefficients' by about 0.01 + 1 / 12 (the
  // third shard's sum(x - mean)).
  const std::int64_t count = eval ? 0 : 3 * s.n * s.l;
  spec::GradSums total = want_sums;
  for (std::size_t j = 0; j < total.sum_dy.size(); ++j) {
    total.sum_dy[j] = 3 * total.sum_dy[j] + 0.5;
    total.sum_dy_xmu[j] = 3 * total.sum_dy_xmu[j] - 0.25;
    total.sum_xmu[j] = 3 * total.sum_xmu[j] + 0.01 * static_cast<double>(count);
  }
  const core::ChannelGradSums total_sums{channel_values(total.sum_dy), channel_values(total.sum_dy_xmu),
                                         channel_values(total.sum_xmu)};
  {
    const Tensor coef_b = core::batch_norm_backward_coefficients(count, channel_values(invstd), w, total_sums, param);
    const Tensor dx = core::batch_norm_backward_apply(dy, x, coef, coef_b);
    const Vec want = spec::backward_apply(dys, xs, s.n, s.c, s.l, mean, invstd, weight, total, count);
    Vec scale(want.size());
    const double per = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    for_each_element(s, [&](std::size_t at, std::size_t u) {
      const double wj = affine ? std::abs(weight[u]) : 1.0;
      const double e = std::abs(spec::mean_offset(total, u, count));
      scale[at] = wj * invstd[u] *
                  (std::abs(dys[at]) + std::abs(total.sum_dy[u]) * per +
                   (std::abs(xs[at] - mean[u]) + e) * invstd[u] * invstd[u] *
                       (std::abs(total.sum_dy_xmu[u]) + e * std::abs(total.sum_dy[u])) * per);
    });
    CHECK(dx.dtype() == dtype);
    check_within(dx.to_vector<double>(), want, scale, elementwise_accuracy(dtype), "dx");
  }

  // Stage 7: the shard's parameter gradients, added to what is there.
  if (affine) {
    const Tensor gw = Tensor::full(Shape{s.c}, 0.5, param, test_device());
    const Tensor gb = Tensor::full(Shape{s.c}, -0.5, param, test_device());
    // This shard's part, about the batch's exact mean (the total above).
    core::batch_norm_param_grads(gw, gb, channel_values(invstd),
                                 core::ChannelGradSums{channel_values(want_sums.sum_dy),
                                                       channel_values(want_sums.sum_dy_xmu), Tensor()},
                                 total_sums, count);
    Vec want_gw(static_cast<std::size_t>(s.c), 0.5), want_gb(static_cast<std::size_t>(s.c), -0.5);
    spec::param_grads(want_gw, want_gb, invstd, want_sums, total, count);
    // One float64 multiply-add of the existing gradient and the shard's
    // term, rounded to the parameter dtype.
    Vec gw_scale, gb_scale;
    for (std::size_t j = 0; j < invstd.size(); ++j) {
      const double e = std::abs(spec::mean_offset(total, j, count));
      gw_scale.push_back(0.5 + (std::abs(want_sums.sum_dy_xmu[j]) + e * std::abs(want_sums.sum_dy[j])) * invstd[j]);
      gb_scale.push_back(0.5 + std::abs(want_sums.sum_dy[j]));
    }
    const Accuracy stored{0.0, param == DType::Float64 ? 1e-15 : std::ldexp(1.0, -23)};
    check_within(gw.to_vector<double>(), want_gw, gw_scale, stored, "grad_weight");
    check_within(gb.to_vector<double>(), want_gb, gb_scale, stored, "grad_bias");
  }
}

TEST_CASE("Batch renormalization's factors match the specification, clamped and not", "[core][batchnorm][levels]") {
  const bool clamp = GENERATE(false, true);
  const DType param_dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, clamp, dtype_name(param_dtype), test_device());
  const std::int64_t c = 37;
  const Device device = test_device();
  const Tensor mean = Tensor::randn(Shape{c}, kSeed + 80, DType::Float64, device, 0.5, 2.0);
  const Tensor invstd = Tensor::rand(Shape{c}, kSeed + 81, DType::Float64, device, 0.2, 5.0);
  const Tensor running_mean = Tensor::randn(Shape{c}, kSeed + 82, param_dtype, device);
  // Variances on both sides of eps, so that clamp mode clamps some.
  const Tensor running_var = Tensor::rand(Shape{c}, kSeed + 83, param_dtype, device, 0.0, 0.5);
  const double eps = 0.05, rmax = 2.5, dmax = 1.5;
  const core::RenormFactors got =
      core::batch_renorm_factors(mean, invstd, running_mean, running_var, eps, clamp, rmax, dmax);
  const spec::Renorm want =
      spec::renorm_factors(mean.to_vector<double>(), invstd.to_vector<double>(), running_mean.to_vector<double>(),
                           running_var.to_vector<double>(), eps, clamp, rmax, dmax);
  CHECK(got.r.device() == device);
  const auto r = got.r.to_vector<double>(), d = got.d.to_vector<double>();
  int clamped_r = 0, clamped_d = 0;
  for (std::size_t j = 0; j < r.size(); ++j) {
    CAPTURE(j);
    CHECK_THAT(r[j], Catch::Matchers::WithinRel(want.r[j], 1e-14) || Catch::Matchers::WithinAbs(want.r[j], 1e-14));
    CHECK_THAT(d[j], Catch::Matchers::WithinRel(want.d[j], 1e-14) || Catch::Matchers::WithinAbs(want.d[j], 1e-14));
    clamped_r += r[j] == rmax || r[j] == 1.0 / rmax;
    clamped_d += std::abs(d[j]) == dmax;
  }
  // The data reach the limits on some channels and stay inside on others.
  CHECK(clamped_r > 0);
  CHECK(clamped_r < static_cast<int>(c));
  CHECK(clamped_d > 0);
  CHECK(clamped_d < static_cast<int>(c));
}

TEST_CASE("Batch renormalization's factors refuse bad limits and mismatched statistics", "[core][batchnorm]") {
  const Device device = test_device();
  const Tensor mean = Tensor::zeros(Shape{3}, DType::Float64, device), invstd = Tensor::ones(Shape{3}, DType::Float64, device);
  const Tensor rm = Tensor::zeros(Shape{3}, DType::Float32, device), rv = Tensor::ones(Shape{3}, DType::Float32, device);
  CHECK_THROWS_MATCHES(core::batch_renorm_factors(mean, invstd, rm, rv, 1e-5, false, 0.5, 0.0), InvalidArgument,
                       MessageIs("batch_renorm_factors: rmax 0.5, dmax 0, expected rmax >= 1 and dmax >= 0"));
  CHECK_THROWS_MATCHES(core::batch_renorm_factors(mean, invstd, rm, rv.to(DType::Float64), 1e-5, false, 1.0, 0.0),
                       InvalidArgument, MessageIs("batch_renorm_factors: running_var has dtype float64, expected float32"));
  CHECK_THROWS_MATCHES(core::batch_renorm_factors(mean.rows(0, 2), invstd, rm, rv, 1e-5, false, 1.0, 0.0),
                       InvalidArgument, MessageIs("batch_renorm_factors: mean has shape (2), expected (3)"));
  CHECK_THROWS_MATCHES(core::batch_renorm_factors(mean, invstd, rm, rv, -1.0, false, 1.0, 0.0), InvalidArgument,
                       MessageIs("batch_renorm_factors: eps is -1, expected >= 0"));
}

TEST_CASE("Batch-norm stages reject inconsistent arguments before any work", "[core][batchnorm]") {
  const Device dev = test_device();
  const Tensor x = Tensor::randn(Shape{4, 3}, kSeed, DType::Float32, dev);
  CHECK_THROWS_MATCHES(core::batch_norm_moments(Tensor::zeros(Shape{4}, DType::Float32, dev)), InvalidArgument,
                       MessageIs("batch_norm_moments: x has rank 1, expected rank >= 2 (N, C, ...)"));
  CHECK_THROWS_MATCHES(core::batch_norm_moments(Tensor::zeros(Shape{4, 3}, DType::Int64, dev)), InvalidArgument,
                       MessageIs("batch_norm_moments: x has dtype int64, expected float32, float64, float16 or bfloat16"));
  CHECK_THROWS_MATCHES(core::merge_moments({}, dev), InvalidArgument,
                       MessageIs("merge_moments: 0 parts, expected 1 to 64"));
  const core::ChannelMoments m = core::batch_norm_moments(x);
  const core::ChannelMoments narrow = core::batch_norm_moments(Tensor::randn(Shape{4, 2}, kSeed, DType::Float32, dev));
  CHECK_THROWS_MATCHES(core::merge_moments(std::vector<core::ChannelMoments>{m, narrow}, dev), InvalidArgument,
                       MessageIs("merge_moments: a part's mean has shape (2), expected (3)"));
  CHECK_THROWS_MATCHES(core::batch_norm_variance(m, -1.0, false), InvalidArgument,
                       MessageIs("batch_norm_variance: eps is -1, expected >= 0"));
  const core::BatchNormVariance v = core::batch_norm_variance(m, 1e-5, false);
  CHECK_THROWS_MATCHES(core::batch_norm_coefficients(m.mean, v.invstd, Tensor::ones(Shape{3}, DType::Float64, dev),
                                                     Tensor(), DType::Float32),
                       InvalidArgument, MessageIs("batch_norm_coefficients: weight has dtype float64, expected float32"));
  const Tensor coef = core::batch_norm_coefficients(m.mean, v.invstd, Tensor(), Tensor(), DType::Float32);
  CHECK_THROWS_MATCHES(core::batch_norm_apply(Tensor::randn(Shape{4, 5}, kSeed, DType::Float32, dev), coef),
                       InvalidArgument,
                       MessageIs("batch_norm_apply: coefficients has dtype float64 and shape (12), expected float64 (20) "
                                 "(the coefficients of 5 channels)"));
  CHECK_THROWS_MATCHES(core::batch_norm_grad_sums(Tensor::randn(Shape{4, 3}, kSeed, DType::Float64, dev), x, coef),
                       InvalidArgument, MessageIs("batch_norm_grad_sums: grad_output has dtype float64, expected float32 (x's)"));
  const Tensor running = Tensor::zeros(Shape{3}, DType::Float32, dev);
  CHECK_THROWS_MATCHES(core::update_running_stats(running, running, Tensor::zeros(Shape{}, DType::Int64, dev), m.mean,
                                                  v.unbiased_var, 1.5),
                       InvalidArgument,
                       MessageIs("update_running_stats: momentum is 1.5, expected a value in [0, 1] or none"));
}
