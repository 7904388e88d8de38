// core's pooling stages (syncbn/core/pool.hpp) against support/conv_spec.hpp:
// random windows, strides, padding, dilation, ceil_mode and
// count_include_pad; ties (the first maximum takes the gradient); adaptive
// windows that overlap. Device-generic (every CPU level; cuda:0).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/conv_spec.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/random_values.hpp"
#include "support/seeds.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/core/pool.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
namespace spec = syncbn::testing::spec;
using syncbn::testing::check_close;
using syncbn::testing::device_tensor;
using syncbn::testing::kSeed;
using syncbn::testing::normal_values;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::tolerance_for;

namespace {

std::string describe(const spec::Pool& s) {
  std::ostringstream os;
  os << "x (" << s.n << ", " << s.c << ", " << s.h << ", " << s.w << "), kernel " << s.kh << "x" << s.kw << ", stride "
     << s.sh << "x" << s.sw << ", padding " << s.ph << "x" << s.pw << ", dilation " << s.dh << "x" << s.dw
     << (s.ceil_mode ? ", ceil_mode" : "") << (s.count_include_pad ? "" : ", count_include_pad off");
  return os.str();
}

core::Pool2dGeometry geometry(const spec::Pool& s) {
  core::Pool2dGeometry g;
  g.kernel = {s.kh, s.kw};
  g.stride = {s.sh, s.sw};
  g.padding = {s.ph, s.pw};
  g.dilation = {s.dh, s.dw};
  g.ceil_mode = s.ceil_mode;
  g.count_include_pad = s.count_include_pad;
  return g;
}

spec::Pool random_pool(std::mt19937_64& rng, bool dilated) {
  auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  for (;;) {
    spec::Pool s{};
    s.n = pick(1, 2);
    s.c = pick(1, 3);
    s.h = pick(1, 9);
    s.w = pick(1, 9);
    s.kh = pick(1, 4);
    s.kw = pick(1, 4);
    s.sh = pick(1, 3);
    s.sw = pick(1, 3);
    s.ph = pick(0, s.kh / 2);
    s.pw = pick(0, s.kw / 2);
    s.dh = dilated ? pick(1, 2) : 1;
    s.dw = dilated ? pick(1, 2) : 1;
    s.ceil_mode = pick(0, 1) == 1;
    s.count_include_pad = pick(0, 1) == 1;
    if (s.oh() >= 1 && s.ow() >= 1) return s;
  }
}

// Small integers, so that windows hold ties.
std::vector<double> integers(std::int64_t count, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> d(-3, 3);
  std::vector<double> v(static_cast<std::size_t>(count));
  for (double& e : v) e = d(rng);
  return v;
}

}  // namespace

TEST_CASE("Max pooling matches the specification, ties going to the first maximum", "[core][pool]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(3);
  for (int i = 0; i < 60; ++i) {
    const spec::Pool s = random_pool(rng, true);
    INFO(describe(s));
    const Shape xs{s.n, s.c, s.h, s.w}, ys{s.n, s.c, s.oh(), s.ow()};
    const auto x = integers(s.n * s.c * s.h * s.w, rng);
    const auto dy = normal_values(s.n * s.c * s.oh() * s.ow(), rng, true);
    std::vector<double> want;
    std::vector<std::int64_t> at;
    spec::max_pool2d(s, x, want, at);
    const core::MaxPool2dResult r = core::max_pool2d(device_tensor(x, xs, dtype), geometry(s));
    REQUIRE(r.output.shape() == ys);
    check_close(r.output, want, tolerance_for(dtype), "output");
    CHECK(r.indices.to_vector<std::int64_t>() == at);
    const Tensor dx = core::max_pool2d_backward(device_tensor(dy, ys, dtype), r.indices, xs);
    check_close(dx, spec::max_pool2d_grad(s, dy, at), tolerance_for(dtype), "input gradient");
  }
}

TEST_CASE("A max-pooling window over padding only gives -inf and passes no gradient", "[core][pool]") {
  // Kernel 2 with dilation 2 and padding 1 over a 1x1 input: both taps fall
  // in the padding (PyTorch returns -inf with an index outside the plane).
  const Tensor x = Tensor::from_vector(std::vector<double>{5.0}, Shape{1, 1, 1, 1}, test_device());
  core::Pool2dGeometry g;
  g.kernel = {2, 2};
  g.stride = {2, 2};
  g.padding = {1, 1};
  g.dilation = {2, 2};
  const core::MaxPool2dResult r = core::max_pool2d(x, g);
  CHECK(r.output.to_vector<double>() == std::vector<double>{-std::numeric_limits<double>::infinity()});
  CHECK(r.indices.to_vector<std::int64_t>() == std::vector<std::int64_t>{-1});
  const Tensor dx = core::max_pool2d_backward(Tensor::ones(Shape{1, 1, 1, 1}, DType::Float64, test_device()), r.indices,
                                              x.shape());
  CHECK(dx.to_vector<double>() == std::vector<double>{0.0});
}

TEST_CASE("Max pooling passes NaN through", "[core][pool]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Tensor x = Tensor::from_vector(std::vector<double>{1.0, nan, 3.0, 2.0}, Shape{1, 1, 2, 2}, test_device());
  core::Pool2dGeometry g;
  g.kernel = {2, 2};
  g.stride = {2, 2};
  const core::MaxPool2dResult r = core::max_pool2d(x, g);
  CHECK(std::isnan(r.output.to_vector<double>()[0]));
  CHECK(r.indices.to_vector<std::int64_t>()[0] == 1);
}

TEST_CASE("Average pooling matches the specification with either divisor", "[core][pool]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(4);
  for (int i = 0; i < 60; ++i) {
    const spec::Pool s = random_pool(rng, false);
    INFO(describe(s));
    const Shape xs{s.n, s.c, s.h, s.w}, ys{s.n, s.c, s.oh(), s.ow()};
    const auto x = normal_values(s.n * s.c * s.h * s.w, rng, true);
    const auto dy = normal_values(s.n * s.c * s.oh() * s.ow(), rng, true);
    const Tensor y = core::avg_pool2d(device_tensor(x, xs, dtype), geometry(s));
    REQUIRE(y.shape() == ys);
    check_close(y, spec::avg_pool2d(s, x), tolerance_for(dtype), "output");
    check_close(core::avg_pool2d_backward(device_tensor(dy, ys, dtype), xs, geometry(s)), spec::avg_pool2d_grad(s, dy),
                tolerance_for(dtype), "input gradient");
  }
}

TEST_CASE("Adaptive average pooling matches the specification, overlapping windows included", "[core][pool]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const auto sizes = GENERATE(std::vector<std::int64_t>{7, 7, 1, 1}, std::vector<std::int64_t>{7, 5, 3, 2},
                              std::vector<std::int64_t>{4, 6, 4, 6}, std::vector<std::int64_t>{3, 2, 5, 4});
  CAPTURE(kSeed, dtype, sizes, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(5);
  const std::int64_t h = sizes[0], w = sizes[1], oh = sizes[2], ow = sizes[3];
  const Shape xs{2, 3, h, w}, ys{2, 3, oh, ow};
  const auto x = normal_values(xs.numel(), rng, true);
  const Tensor y = core::adaptive_avg_pool2d(device_tensor(x, xs, dtype), oh, ow);
  REQUIRE(y.shape() == ys);
  check_close(y, spec::adaptive_avg_pool2d(6, h, w, oh, ow, x), tolerance_for(dtype), "output");
  // The backward is the transpose of the forward: <dy, A x> == <A^T dy, x>
  // for every basis vector x, i.e. dx[k] = sum over outputs of dy * A[o][k].
  const auto dy = normal_values(ys.numel(), rng, true);
  const std::vector<double> dx = core::adaptive_avg_pool2d_backward(device_tensor(dy, ys, dtype), xs).to_vector<double>();
  std::vector<double> want(static_cast<std::size_t>(xs.numel()));
  for (std::int64_t k = 0; k < xs.numel(); ++k) {
    std::vector<double> e(static_cast<std::size_t>(xs.numel()), 0.0);
    e[static_cast<std::size_t>(k)] = 1.0;
    const auto column = spec::adaptive_avg_pool2d(6, h, w, oh, ow, e);
    for (std::size_t o = 0; o < column.size(); ++o) want[static_cast<std::size_t>(k)] += dy[o] * column[o];
  }
  check_close(dx, want, tolerance_for(dtype), "input gradient");
}

TEST_CASE("Channels-last pooling matches the specification, with the same indices", "[core][pool][channels-last]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(6);
  // NHWC in, NHWC out: the values are the NCHW ones permuted, compared
  // with the specification after the permutation back.
  const auto last = [&](const std::vector<double>& v, const Shape& nchw) {
    return core::to_channels_last(device_tensor(v, nchw, dtype));
  };
  const auto nhwc = [](const Shape& nchw) { return Shape{nchw[0], nchw[2], nchw[3], nchw[1]}; };
  for (int i = 0; i < 40; ++i) {
    const spec::Pool s = random_pool(rng, i % 2 == 0);
    INFO(describe(s));
    const Shape xs{s.n, s.c, s.h, s.w}, ys{s.n, s.c, s.oh(), s.ow()};
    core::Pool2dGeometry g = geometry(s);
    g.layout = core::ChannelLayout::Last;
    const auto x = integers(xs.numel(), rng);
    const auto dy = normal_values(ys.numel(), rng, true);
    std::vector<double> want;
    std::vector<std::int64_t> at;
    spec::max_pool2d(s, x, want, at);
    const core::MaxPool2dResult r = core::max_pool2d(last(x, xs), g);
    REQUIRE(r.output.shape() == nhwc(ys));
    check_close(core::to_channels_first(r.output), want, tolerance_for(dtype), "max output");
    CHECK(core::to_channels_first(r.indices).to_vector<std::int64_t>() == at);
    const Tensor dx = core::max_pool2d_backward(last(dy, ys), r.indices, nhwc(xs), core::ChannelLayout::Last);
    check_close(core::to_channels_first(dx), spec::max_pool2d_grad(s, dy, at), tolerance_for(dtype),
                "max input gradient");
    if (s.dh == 1 && s.dw == 1) {
      const Tensor y = core::avg_pool2d(last(x, xs), g);
      REQUIRE(y.shape() == nhwc(ys));
      check_close(core::to_channels_first(y), spec::avg_pool2d(s, x), tolerance_for(dtype), "average output");
      check_close(core::to_channels_first(core::avg_pool2d_backward(last(dy, ys), nhwc(xs), g)),
                  spec::avg_pool2d_grad(s, dy), tolerance_for(dtype), "average input gradient");
    }
  }
  // Adaptive windows, overlapping (7 -> 3) and global.
  for (const auto& [oh, ow] : {std::pair<std::int64_t, std::int64_t>{3, 2}, {1, 1}}) {
    const Shape xs{2, 3, 7, 5}, ys{2, 3, oh, ow};
    const auto x = normal_values(xs.numel(), rng, true);
    const Tensor y = core::adaptive_avg_pool2d(last(x, xs), oh, ow, core::ChannelLayout::Last);
    REQUIRE(y.shape() == nhwc(ys));
    check_close(core::to_channels_first(y), spec::adaptive_avg_pool2d(6, 7, 5, oh, ow, x), tolerance_for(dtype),
                "adaptive output");
    const auto dy = normal_values(ys.numel(), rng, true);
    const Tensor dx_first = core::adaptive_avg_pool2d_backward(device_tensor(dy, ys, dtype), xs);
    const Tensor dx_last =
        core::adaptive_avg_pool2d_backward(last(dy, ys), nhwc(xs), core::ChannelLayout::Last);
    check_close(core::to_channels_first(dx_last), dx_first.to_vector<double>(), tolerance_for(dtype),
                "adaptive input gradient");
  }
}

TEST_CASE("Output sizes follow PyTorch's rule, ceil_mode included", "[core][pool]") {
  CHECK(core::pool_output_size(28, 2, 2, 0, 1, false) == 14);
  CHECK(core::pool_output_size(5, 2, 2, 0, 1, false) == 2);
  CHECK(core::pool_output_size(5, 2, 2, 0, 1, true) == 3);
  CHECK(core::pool_output_size(4, 3, 2, 1, 1, true) == 3);
  // The last window would start in the right padding only: dropped.
  CHECK(core::pool_output_size(5, 2, 2, 1, 1, true) == 3);
  CHECK(core::pool_output_size(5, 2, 2, 1, 1, false) == 3);
}

TEST_CASE("Pooling rejects bad windows, padding and gradients", "[core][pool]") {
  const Tensor x = Tensor::zeros(Shape{1, 2, 4, 4}, DType::Float32, test_device());
  core::Pool2dGeometry g;
  g.kernel = {2, 2};
  g.stride = {2, 2};
  core::Pool2dGeometry bad = g;
  bad.padding = {2, 0};
  CHECK_THROWS_MATCHES(core::max_pool2d(x, bad), InvalidArgument,
                       MessageIs("max_pool2d: padding 2, expected between 0 and half the kernel size (1)"));
  bad = g;
  bad.kernel = {5, 5};
  CHECK_THROWS_MATCHES(core::avg_pool2d(x, bad), InvalidArgument,
                       MessageIs("avg_pool2d: input (1, 2, 4, 4) gives an output of 0x0, expected at least 1x1 (the "
                                 "window is larger than the padded input)"));
  bad = g;
  bad.dilation = {2, 2};
  CHECK_THROWS_MATCHES(core::avg_pool2d(x, bad), InvalidArgument,
                       MessageIs("avg_pool2d: dilation 2x2, expected 1x1 (average pooling has no dilation)"));
  CHECK_THROWS_MATCHES(core::adaptive_avg_pool2d(x, 0, 1), InvalidArgument,
                       MessageIs("adaptive_avg_pool2d: output size 0x1, expected at least 1x1"));
  CHECK_THROWS_MATCHES(core::avg_pool2d_backward(Tensor::zeros(Shape{1, 2, 3, 2}, DType::Float32, test_device()),
                                                 x.shape(), g),
                       InvalidArgument,
                       MessageIs("avg_pool2d_backward: grad_output has shape (1, 2, 3, 2), expected (1, 2, 2, 2) "
                                 "(the output's)"));
  CHECK_THROWS_MATCHES(core::max_pool2d(Tensor::zeros(Shape{2, 4, 4}, DType::Float32, test_device()), g),
                       InvalidArgument,
                       MessageIs("max_pool2d: input has shape (2, 4, 4), expected a 4-D (N, C, H, W) tensor"));
}
