// The batch-norm stages in their other forms (syncbn/core/batch_norm.hpp):
// channels-last tensors, with every pairing of x's and grad_output's layout,
// and fused activations (relu, leaky_relu, elu), also read back from y (the
// in-place mode), against the float64 specification
// (support/batch_norm_spec.hpp) in channels-first order. Shapes take the
// (N, C) paths of the kernels (channels-last is (N * L, C)) and the (N, C, L)
// ones. Device-generic: every CPU level, and cuda:0 in the CUDA binary.

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
using core::Activation;
using core::ChannelLayout;
using spec::Vec;
using syncbn::testing::kSeed;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

struct Case {
  std::int64_t n, c, l;
};

std::ostream& operator<<(std::ostream& os, const Case& s) { return os << "(" << s.n << ", " << s.c << ", " << s.l << ")"; }

const Case kCases[] = {
    {6, 37, 29},   // channels-last rows of 37: vector blocks and a float64 tail
    {3, 64, 100},  // 300 rows of 64 channels: several float32 flush periods
    {2, 1100, 3},  // rows wider than the 16-bit staging chunk
    {33, 5, 1},    // (N, C): the same in both layouts
    {0, 6, 3},     // an empty shard
};

// The layouts' cases, and 1,024 channels-last rows of 1 KiB (1 MiB in
// float32, the least that streams): the gradient sums that prefetch (Note
// [Prefetching the column sums]).
const Case kLayoutCases[] = {kCases[0], kCases[1], kCases[2], kCases[3], kCases[4], {4, 256, 256}};

// kCases, rows of 16 channels that fold eight to a row with three left over
// (Note [Folded rows]), and runs of 1,100 values (two 16-bit staging chunks
// each): where the relu mask's bytes fall; and 1 MiB of channels-last rows
// of 1 KiB and of 256 B in float32, the masked gradient sums' streamed
// code (prefetching, and not: Note [Prefetching the column sums]).
const Case kMaskCases[] = {kCases[0], kCases[1],    kCases[2],      kCases[3], kCases[4],
                           {43, 16, 1}, {2, 3, 1100}, {4, 256, 256}, {4, 64, 1024}};

// Element-wise accuracy of a result rounded to dtype, relative to `scale`.
double tolerance(DType dtype) {
  switch (dtype) {
    case DType::Float64: return 1e-12;
    case DType::Float16: return std::ldexp(1.0, -10);
    case DType::BFloat16: return std::ldexp(1.0, -7);
    default: return 2e-5;
  }
}

void check_close(const Vec& got, const Vec& want, const Vec& scale, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double allowed = tol * (std::abs(want[i]) + scale[i]) + 1e-300;
    if (!(std::abs(got[i] - want[i]) <= allowed)) {
      INFO("first mismatch at " << i << " of " << got.size() << ": got " << got[i] << ", expected " << want[i]
                                << ", allowed " << allowed);
      CHECK(std::abs(got[i] - want[i]) <= allowed);
      return;
    }
  }
}

Tensor channel_values(const Vec& v) {
  return Tensor::from_vector(v, Shape{static_cast<std::int64_t>(v.size())}, test_device());
}

// A case's channels-first (N, C, L) tensor in `layout`.
Tensor in_layout(const Tensor& x_first, ChannelLayout layout) {
  return layout == ChannelLayout::Last ? core::to_channels_last(x_first) : x_first;
}

// A tensor of `layout` read back as channels-first values.
Vec first_values(const Tensor& t, ChannelLayout layout) {
  return (layout == ChannelLayout::Last ? core::to_channels_first(t) : t).to_vector<double>();
}

// The per-channel statistics and affine parameters of a test, exactly
// representable in float32.
struct Channels {
  Vec mean, invstd, weight, bias;
};

Channels channels(std::int64_t c, double center) {
  Channels ch;
  for (std::int64_t j = 0; j < c; ++j) {
    ch.mean.push_back(center + 0.0625 * static_cast<double>(j % 7));
    ch.invstd.push_back(1.0 / (1.0 + 0.25 * static_cast<double>(j % 5)));
    ch.weight.push_back((0.5 + 0.25 * static_cast<double>(j % 3)) * (j % 2 == 0 ? 1.0 : -1.0));
    ch.bias.push_back(-0.5 + 0.25 * static_cast<double>(j % 4));
  }
  return ch;
}

// Backward coefficients from the specification's sums over a batch of
// `count` values per channel.
Tensor backward_coefficients(std::int64_t count, const Channels& ch, const Tensor& weight, const spec::GradSums& sums,
                             DType param) {
  return core::batch_norm_backward_coefficients(
      count, channel_values(ch.invstd), weight,
      core::ChannelGradSums{channel_values(sums.sum_dy), channel_values(sums.sum_dy_xmu), channel_values(sums.sum_xmu)},
      param);
}

}  // namespace

TEST_CASE("Channels-last stages match the specification for every pairing of input and gradient layout",
          "[core][batchnorm][layout][levels]") {
  const Case s = GENERATE(from_range(std::begin(kLayoutCases), std::end(kLayoutCases)));
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::BFloat16);
  const ChannelLayout layout = GENERATE(ChannelLayout::First, ChannelLayout::Last);
  const ChannelLayout grad_layout = GENERATE(ChannelLayout::First, ChannelLayout::Last);
  CAPTURE(kSeed, s, dtype, core::channel_layout_name(layout), core::channel_layout_name(grad_layout), test_device());
  const DType param = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  const Tensor x_first = Tensor::randn(Shape{s.n, s.c, s.l}, kSeed + 11, dtype, test_device(), 2.0, 1.5);
  const Tensor dy_first = Tensor::randn(Shape{s.n, s.c, s.l}, kSeed + 12, dtype, test_device(), 0.1, 1.0);
  const Vec xs = x_first.to_vector<double>(), dys = dy_first.to_vector<double>();
  const Tensor x = in_layout(x_first, layout), dy = in_layout(dy_first, grad_layout);
  const core::BatchNormForm form{layout, grad_layout, Activation::identity(), false};

  // The layout change itself is exact.
  CHECK(x.to_vector<double>() == (layout == ChannelLayout::Last ? spec::to_channels_last(xs, s.n, s.c, s.l) : xs));

  const spec::Moments want_m = spec::moments(xs, s.n, s.c, s.l);
  const core::ChannelMoments m = core::batch_norm_moments(x, layout);
  CHECK(m.count == want_m.count);
  Vec mean_scale(static_cast<std::size_t>(s.c), 3.0), m2_scale(static_cast<std::size_t>(s.c), 0.0);
  for (std::size_t j = 0; j < m2_scale.size(); ++j) m2_scale[j] = 10.0 * static_cast<double>(m.count);
  check_close(m.mean.to_vector<double>(), want_m.mean, mean_scale, dtype == DType::Float64 ? 1e-12 : 1e-6, "mean");
  check_close(m.m2.to_vector<double>(), want_m.m2, m2_scale, dtype == DType::Float64 ? 1e-12 : 1e-6, "m2");

  const Channels ch = channels(s.c, 2.0);
  const Tensor w = channel_values(ch.weight).to(param), b = channel_values(ch.bias).to(param);
  const Tensor coef = core::batch_norm_coefficients(channel_values(ch.mean), channel_values(ch.invstd), w, b, param);
  const Tensor y = core::batch_norm_apply(x, coef, form);
  CHECK(y.shape() == x.shape());
  const Vec want_y = spec::apply(xs, s.n, s.c, s.l, ch.mean, ch.invstd, ch.weight, ch.bias);
  check_close(first_values(y, layout), want_y, Vec(want_y.size(), 2.0), tolerance(dtype), "y");

  const spec::GradSums want_sums = spec::grad_sums(dys, xs, s.n, s.c, s.l, ch.mean);
  const core::ChannelGradSums sums = core::batch_norm_grad_sums(dy, x, coef, form);
  const Vec sum_scale(static_cast<std::size_t>(s.c), 4.0 * static_cast<double>(s.n * s.l));
  const double sum_tol = dtype == DType::Float64 ? 1e-12 : 1e-5;
  check_close(sums.sum_dy.to_vector<double>(), want_sums.sum_dy, sum_scale, sum_tol, "sum_dy");
  check_close(sums.sum_dy_xmu.to_vector<double>(), want_sums.sum_dy_xmu, sum_scale, sum_tol, "sum_dy_xmu");
  check_close(sums.sum_xmu.to_vector<double>(), want_sums.sum_xmu, sum_scale, sum_tol, "sum_xmu");

  const std::int64_t count = 2 * s.n * s.l;
  const Tensor coef_b = backward_coefficients(count, ch, w, want_sums, param);
  const Tensor dx = core::batch_norm_backward_apply(dy, x, coef, coef_b, form);
  CHECK(dx.shape() == x.shape());
  const Vec want_dx = spec::backward_apply(dys, xs, s.n, s.c, s.l, ch.mean, ch.invstd, ch.weight, want_sums, count);
  check_close(first_values(dx, layout), want_dx, Vec(want_dx.size(), 4.0), tolerance(dtype), "dx");
}

TEST_CASE("Fused activations match batch norm followed by the activation, also when read back from the output",
          "[core][batchnorm][activation][levels]") {
  const Case s = GENERATE(from_range(std::begin(kCases), std::end(kCases)));
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::BFloat16);
  const ChannelLayout layout = GENERATE(ChannelLayout::First, ChannelLayout::Last);
  const Activation act = GENERATE(Activation::relu(), Activation::leaky_relu(0.1), Activation::elu(1.0),
                                  Activation::elu(0.5), Activation::identity());
  const bool from_output = GENERATE(false, true);
  if (from_output && !act.invertible()) return;
  CAPTURE(kSeed, s, dtype, core::channel_layout_name(layout), act.name(), from_output, test_device());
  const DType param = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  const Channels ch = channels(s.c, 0.5);
  const auto kind = static_cast<int>(act.kind);

  // Inputs whose normalised values keep away from the activation's kink, so
  // that every precision sees the same side of it: values with |z| < 0.02
  // are moved to z = +-0.05 before rounding to the dtype.
  Vec xs = Tensor::randn(Shape{s.n, s.c, s.l}, kSeed + 21, DType::Float64, test_device(), 0.5, 1.5).to_vector<double>();
  auto z_of = [&](std::size_t at) {
    const auto j = static_cast<std::size_t>((static_cast<std::int64_t>(at) / s.l) % s.c);
    return ((xs[at] - ch.mean[j]) * ch.invstd[j] * ch.weight[j] + ch.bias[j]);
  };
  for (std::size_t at = 0; at < xs.size(); ++at) {
    const double z = z_of(at);
    if (std::abs(z) >= 0.02) continue;
    const auto j = static_cast<std::size_t>((static_cast<std::int64_t>(at) / s.l) % s.c);
    xs[at] = ch.mean[j] + ((z < 0 ? -0.05 : 0.05) - ch.bias[j]) / (ch.invstd[j] * ch.weight[j]);
  }
  const Tensor x_first = Tensor::from_vector(xs, Shape{s.n, s.c, s.l}, test_device()).to(dtype);
  xs = x_first.to_vector<double>();
  for (std::size_t at = 0; at < xs.size(); ++at) REQUIRE(std::abs(z_of(at)) >= 0.01);
  const Tensor dy_first = Tensor::randn(Shape{s.n, s.c, s.l}, kSeed + 22, dtype, test_device(), 0.1, 1.0);
  const Vec dys = dy_first.to_vector<double>();
  const Tensor x = in_layout(x_first, layout), dy = in_layout(dy_first, layout);

  // The reference: z, y = act(z) and dz = dy * act'(z) in float64.
  Vec want_y(xs.size()), dzs(xs.size());
  for (std::size_t at = 0; at < xs.size(); ++at) {
    want_y[at] = spec::activate(kind, act.alpha, z_of(at));
    dzs[at] = dys[at] * spec::activation_slope(kind, act.alpha, z_of(at));
  }

  const Tensor w = channel_values(ch.weight).to(param), b = channel_values(ch.bias).to(param);
  const Tensor coef = core::batch_norm_coefficients(channel_values(ch.mean), channel_values(ch.invstd), w, b, param);
  const core::BatchNormForm fwd{layout, std::nullopt, act, false};
  const Tensor y = core::batch_norm_apply(x, coef, fwd);
  check_close(first_values(y, layout), want_y, Vec(want_y.size(), 2.0), tolerance(dtype), "y");
  {
    // In place: the same values, written over x.
    const Tensor x_copy = x.clone();
    core::batch_norm_apply_(x_copy, coef, fwd);
    CHECK(x_copy.to_vector<double>() == y.to_vector<double>());
  }

  // From the output, the kernels read y as stored (rounded to the dtype),
  // from which x - mean is recovered up to that rounding over the scale.
  const core::BatchNormForm back{layout, std::nullopt, act, from_output};
  const Tensor saved = from_output ? y : x;
  Vec recovered_scale(static_cast<std::size_t>(s.c), 0.0);
  for (std::size_t j = 0; j < recovered_scale.size(); ++j)
    recovered_scale[j] = from_output ? 4.0 / std::abs(ch.invstd[j] * ch.weight[j]) : 0.0;
  const spec::GradSums want_sums = spec::grad_sums(dzs, xs, s.n, s.c, s.l, ch.mean);
  const core::ChannelGradSums sums = core::batch_norm_grad_sums(dy, saved, coef, back);
  const double per_value = from_output && dtype != DType::Float64 ? 8.0 : 4.0;
  Vec sum_scale(static_cast<std::size_t>(s.c));
  for (std::size_t j = 0; j < sum_scale.size(); ++j)
    sum_scale[j] = (per_value + recovered_scale[j]) * static_cast<double>(s.n * s.l);
  const double sum_tol =
      dtype == DType::Float64 ? 1e-11 : from_output && is_reduced_precision(dtype) ? tolerance(dtype) : 1e-5;
  check_close(sums.sum_dy.to_vector<double>(), want_sums.sum_dy, sum_scale, sum_tol, "sum_dz");
  check_close(sums.sum_dy_xmu.to_vector<double>(), want_sums.sum_dy_xmu, sum_scale, sum_tol, "sum_dz_xmu");
  check_close(sums.sum_xmu.to_vector<double>(), want_sums.sum_xmu, sum_scale, sum_tol, "sum_xmu");

  const std::int64_t count = 2 * s.n * s.l;
  const Tensor coef_b = backward_coefficients(count, ch, w, want_sums, param);
  const Tensor dx = core::batch_norm_backward_apply(dy, saved, coef, coef_b, back);
  const Vec want_dx = spec::backward_apply(dzs, xs, s.n, s.c, s.l, ch.mean, ch.invstd, ch.weight, want_sums, count);
  Vec dx_scale(want_dx.size());
  for (std::size_t at = 0; at < dx_scale.size(); ++at) {
    const auto j = static_cast<std::size_t>((static_cast<std::int64_t>(at) / s.l) % s.c);
    dx_scale[at] = 4.0 + recovered_scale[j];
  }
  check_close(first_values(dx, layout), want_dx, dx_scale, tolerance(dtype), "dx");
}

TEST_CASE("The relu mask gives the outputs and gradients of recomputing z, bit for bit",
          "[core][batchnorm][activation][levels]") {
  const Case s = GENERATE(from_range(std::begin(kMaskCases), std::end(kMaskCases)));
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::BFloat16);
  const ChannelLayout layout = GENERATE(ChannelLayout::First, ChannelLayout::Last);
  CAPTURE(kSeed, s, dtype, core::channel_layout_name(layout), test_device());
  const DType param = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  const Channels ch = channels(s.c, 0.5);
  const Tensor x =
      in_layout(Tensor::randn(Shape{s.n, s.c, s.l}, kSeed + 31, dtype, test_device(), 0.5, 1.5), layout);
  const Tensor dy = in_layout(Tensor::randn(Shape{s.n, s.c, s.l}, kSeed + 32, dtype, test_device(), 0.1, 1.0), layout);
  const core::BatchNormForm form{layout, std::nullopt, Activation::relu(), false};
  const Tensor mask = core::batch_norm_relu_mask(x, form);
  const bool kept = test_device().is_cpu() && dtype != DType::Float64;
  REQUIRE(mask.defined() == kept);
  if (!kept) return;
  CHECK(mask.dtype() == DType::Int64);
  // Other forms keep none.
  CHECK_FALSE(core::batch_norm_relu_mask(x, {layout, std::nullopt, Activation::identity(), false}).defined());
  CHECK_FALSE(core::batch_norm_relu_mask(x, {layout, std::nullopt, Activation::leaky_relu(0.1), true}).defined());

  const Tensor w = channel_values(ch.weight).to(param), b = channel_values(ch.bias).to(param);
  const Tensor coef = core::batch_norm_coefficients(channel_values(ch.mean), channel_values(ch.invstd), w, b, param);
  const Tensor y = core::batch_norm_apply(x, coef, form, mask);
  CHECK(y.to_vector<double>() == core::batch_norm_apply(x, coef, form).to_vector<double>());
  const core::ChannelGradSums with = core::batch_norm_grad_sums(dy, x, coef, form, mask);
  const core::ChannelGradSums without = core::batch_norm_grad_sums(dy, x, coef, form);
  CHECK(with.sum_dy.to_vector<double>() == without.sum_dy.to_vector<double>());
  CHECK(with.sum_dy_xmu.to_vector<double>() == without.sum_dy_xmu.to_vector<double>());
  CHECK(with.sum_xmu.to_vector<double>() == without.sum_xmu.to_vector<double>());
  const std::int64_t count = 2 * s.n * s.l;
  const spec::GradSums spec_sums{with.sum_dy.to_vector<double>(), with.sum_dy_xmu.to_vector<double>(),
                                 with.sum_xmu.to_vector<double>()};
  const Tensor coef_b = backward_coefficients(count, ch, w, spec_sums, param);
  CHECK(core::batch_norm_backward_apply(dy, x, coef, coef_b, form, mask).to_vector<double>() ==
        core::batch_norm_backward_apply(dy, x, coef, coef_b, form).to_vector<double>());

  // The backward reads the mask it is given: a forward whose every z is
  // negative (bias -1e6) leaves no bit set, and no dy then reaches the sums.
  Channels negative = ch;
  for (double& v : negative.bias) v = -1e6;
  const Tensor coef_negative = core::batch_norm_coefficients(
      channel_values(ch.mean), channel_values(ch.invstd), w, channel_values(negative.bias).to(param), param);
  const Tensor none_set = core::batch_norm_relu_mask(x, form);
  (void)core::batch_norm_apply(x, coef_negative, form, none_set);
  const core::ChannelGradSums cut = core::batch_norm_grad_sums(dy, x, coef, form, none_set);
  CHECK(cut.sum_dy.to_vector<double>() == Vec(static_cast<std::size_t>(s.c), 0.0));
  CHECK(cut.sum_dy_xmu.to_vector<double>() == Vec(static_cast<std::size_t>(s.c), 0.0));
  if (x.numel() > 0) CHECK(without.sum_dy.to_vector<double>() != Vec(static_cast<std::size_t>(s.c), 0.0));
}

TEST_CASE("Layout changes place every element and reject what they cannot permute", "[core][batchnorm][layout]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::Int64);
  CAPTURE(dtype, test_device());
  std::vector<std::int64_t> values(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<std::int64_t>(i);
  const Tensor x = Tensor::from_vector(values, Shape{2, 3, 4, 5}, test_device()).to(dtype);
  const Tensor last = core::to_channels_last(x);
  CHECK(last.shape() == Shape{2, 4, 5, 3});
  const Vec xs = x.to_vector<double>(), ls = last.to_vector<double>();
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t j = 0; j < 3; ++j)
      for (std::int64_t k = 0; k < 20; ++k)
        CHECK(ls[static_cast<std::size_t>((i * 20 + k) * 3 + j)] == xs[spec::at(3, 20, i, j, k)]);
  const Tensor back = core::to_channels_first(last);
  CHECK(back.shape() == x.shape());
  CHECK(back.to_vector<double>() == xs);
  CHECK(core::to_channels_last(Tensor::zeros(Shape{0, 3, 2}, dtype, test_device())).shape() == Shape{0, 2, 3});
  CHECK_THROWS_MATCHES(core::to_channels_last(Tensor::zeros(Shape{4}, dtype, test_device())), InvalidArgument,
                       MessageIs("to_channels_last: expected a tensor of rank >= 2 (N, C, ...), got (4)"));
}

TEST_CASE("Batch-norm forms reject what they cannot compute, naming the stage", "[core][batchnorm][activation]") {
  const Device dev = test_device();
  const Tensor x = Tensor::randn(Shape{4, 3, 2}, kSeed, DType::Float32, dev);
  const core::ChannelMoments m = core::batch_norm_moments(x);
  const core::BatchNormVariance v = core::batch_norm_variance(m, 1e-5, false);
  const Tensor coef = core::batch_norm_coefficients(m.mean, v.invstd, Tensor(), Tensor(), DType::Float32);
  const Tensor dy = Tensor::randn(x.shape(), kSeed + 1, DType::Float32, dev);
  CHECK_THROWS_MATCHES(core::batch_norm_grad_sums(dy, x, coef, {ChannelLayout::First, std::nullopt, Activation::relu(), true}),
                       InvalidArgument,
                       MessageIs("batch_norm_grad_sums: from_output recovers x from y = relu(z), expected an invertible "
                                 "activation (identity, leaky_relu with a slope > 0, elu)"));
  CHECK_THROWS_MATCHES(core::batch_norm_apply(x, coef, {ChannelLayout::First, std::nullopt, Activation::elu(0.0), false}),
                       InvalidArgument, MessageIs("batch_norm_apply: activation elu alpha 0, expected a finite alpha > 0"));
  CHECK_THROWS_MATCHES(
      core::batch_norm_apply(x, coef, {ChannelLayout::First, std::nullopt, Activation::leaky_relu(-1.0), false}),
      InvalidArgument, MessageIs("batch_norm_apply: activation leaky_relu slope -1, expected a finite slope >= 0"));
  // A channels-last grad for channels-first x has the permuted shape.
  CHECK_THROWS_MATCHES(core::batch_norm_grad_sums(dy, x, coef, {ChannelLayout::First, ChannelLayout::Last, {}, false}),
                       InvalidArgument,
                       MessageIs("batch_norm_grad_sums: grad_output has shape (4, 3, 2), expected (4, 2, 3) (x's, "
                                 "channels-last)"));
  // A relu mask where none is kept, or of another tensor.
  if (dev.is_cpu()) {
    const core::BatchNormForm relu{ChannelLayout::First, std::nullopt, Activation::relu(), false};
    const Tensor mask = core::batch_norm_relu_mask(x, relu);
    CHECK_THROWS_MATCHES(core::batch_norm_apply(x, coef, {}, mask), InvalidArgument,
                         MessageIs("batch_norm_apply: relu_mask given for identity on float32 data on cpu:0, expected "
                                   "an undefined tensor (a mask is kept for relu from x on the CPU, float32 or 16-bit "
                                   "data)"));
    const Tensor wide = Tensor::randn(Shape{4, 3, 20}, kSeed, DType::Float32, dev);
    CHECK_THROWS_MATCHES(core::batch_norm_grad_sums(wide, wide, coef, relu, mask), InvalidArgument,
                         MessageIs("batch_norm_grad_sums: relu_mask is int64 (2) on cpu:0, expected int64 (5) on "
                                   "cpu:0 (batch_norm_relu_mask of x)"));
  }
  // Channels-last x of 2 channels: the coefficients of 3 do not fit.
  CHECK_THROWS_MATCHES(core::batch_norm_apply(x, coef, {ChannelLayout::Last, std::nullopt, {}, false}), InvalidArgument,
                       MessageIs("batch_norm_apply: coefficients has dtype float64 and shape (12), expected float64 (8) "
                                 "(the coefficients of 2 channels)"));
}
