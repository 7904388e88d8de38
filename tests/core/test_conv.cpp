// core's convolution stages (syncbn/core/conv.hpp) against the direct sums
// of support/conv_spec.hpp: random geometries (strides, padding, dilation,
// groups, the 1x1 path that needs no lowering, empty batches), float32 and
// float64. Device-generic: the CPU binaries run it at every CPU level, the
// CUDA binary on cuda:0 (cuDNN).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/convolutions.hpp"
#include "support/conv_spec.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/random_values.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "syncbn/core/conv.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
namespace spec = syncbn::testing::spec;
using syncbn::testing::device_tensor;
using syncbn::testing::kSeed;
using syncbn::testing::normal_values;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

std::string describe(const spec::Conv& s) {
  std::ostringstream os;
  os << "x (" << s.n << ", " << s.c_in << ", " << s.h << ", " << s.w << "), weight (" << s.c_out << ", "
     << s.c_in / s.groups << ", " << s.kh << ", " << s.kw << "), stride " << s.sh << "x" << s.sw << ", padding " << s.ph
     << "x" << s.pw << ", dilation " << s.dh << "x" << s.dw << ", groups " << s.groups;
  return os.str();
}

core::Conv2dGeometry geometry(const spec::Conv& s) {
  return {{s.sh, s.sw}, {s.ph, s.pw}, {s.dh, s.dw}, s.groups};
}

// A random valid convolution (the padded input holds the dilated kernel);
// padding up to 3 lets whole kernel rows and columns fall in the padding.
spec::Conv random_conv(std::mt19937_64& rng) {
  auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  for (;;) {
    spec::Conv s{};
    s.groups = pick(1, 3);
    s.n = pick(0, 3);
    s.c_in = s.groups * pick(1, 3);
    s.c_out = s.groups * pick(1, 3);
    s.h = pick(1, 9);
    s.w = pick(1, 9);
    s.kh = pick(1, 4);
    s.kw = pick(1, 4);
    s.sh = pick(1, 3);
    s.sw = pick(1, 3);
    s.ph = pick(0, 3);
    s.pw = pick(0, 3);
    s.dh = pick(1, 2);
    s.dw = pick(1, 2);
    if (s.h + 2 * s.ph >= s.dh * (s.kh - 1) + 1 && s.w + 2 * s.pw >= s.dw * (s.kw - 1) + 1) return s;
  }
}

std::vector<double> absolute(std::vector<double> v) {
  for (double& e : v) e = std::abs(e);
  return v;
}

// Values rounded to dtype, as the kernels see them.
std::vector<double> rounded(const std::vector<double>& v, DType dtype) {
  if (dtype == DType::Float64) return v;
  std::vector<double> out;
  for (double e : v) out.push_back(static_cast<float>(e));
  return out;
}

// |got - want| <= tol * scale (scale: the sum of the magnitudes of the terms).
void check_sums(const Tensor& got, const std::vector<double>& want, const std::vector<double>& scale, DType dtype,
                const std::string& what) {
  INFO(what);
  const std::vector<double> g = got.to_vector<double>();
  REQUIRE(g.size() == want.size());
  const double tol = dtype == DType::Float64 ? 1e-13 : 1e-5;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double allowed = tol * scale[i] + 1e-300;
    if (!(std::abs(g[i] - want[i]) <= allowed)) {
      INFO("first mismatch at index " << i << " of " << g.size() << ": got " << g[i] << ", expected " << want[i]);
      CHECK(std::abs(g[i] - want[i]) <= allowed);
      return;
    }
  }
}

void check_case(const spec::Conv& s, DType dtype, bool with_bias, std::mt19937_64& rng) {
  INFO(describe(s) << ", dtype " << dtype_name(dtype) << (with_bias ? ", bias" : ""));
  const Shape xs{s.n, s.c_in, s.h, s.w}, ws{s.c_out, s.c_in / s.groups, s.kh, s.kw}, ys{s.n, s.c_out, s.oh(), s.ow()};
  const auto x = rounded(normal_values(s.x_size(), rng), dtype), w = rounded(normal_values(s.w_size(), rng), dtype);
  const auto b = with_bias ? rounded(normal_values(s.c_out, rng), dtype) : std::vector<double>{};
  const auto dy = rounded(normal_values(s.y_size(), rng), dtype);
  const auto g0 = rounded(normal_values(s.w_size(), rng), dtype), gb0 = rounded(normal_values(s.c_out, rng), dtype);

  const Tensor y = core::conv2d(device_tensor(x, xs, dtype), device_tensor(w, ws, dtype),
                                with_bias ? device_tensor(b, Shape{s.c_out}, dtype) : Tensor(), geometry(s));
  REQUIRE(y.shape() == ys);
  check_sums(y, spec::conv2d(s, x, w, b), spec::conv2d(s, absolute(x), absolute(w), absolute(b)), dtype, "output");

  const Tensor dx = core::conv2d_backward_input(device_tensor(dy, ys, dtype), device_tensor(w, ws, dtype), xs, geometry(s));
  check_sums(dx, spec::conv2d_grad_input(s, dy, w), spec::conv2d_grad_input(s, absolute(dy), absolute(w)), dtype,
             "input gradient");

  // The weight and bias gradients accumulate onto what the tensors hold.
  const Tensor dw = device_tensor(g0, ws, dtype);
  core::conv2d_backward_weight_(dw, device_tensor(dy, ys, dtype), device_tensor(x, xs, dtype), geometry(s));
  std::vector<double> want_dw = spec::conv2d_grad_weight(s, dy, x), scale_dw = spec::conv2d_grad_weight(s, absolute(dy), absolute(x));
  for (std::size_t i = 0; i < want_dw.size(); ++i) {
    want_dw[i] += g0[i];
    scale_dw[i] += std::abs(g0[i]);
  }
  check_sums(dw, want_dw, scale_dw, dtype, "weight gradient");

  const Tensor db = device_tensor(gb0, Shape{s.c_out}, dtype);
  core::conv2d_backward_bias_(db, device_tensor(dy, ys, dtype));
  std::vector<double> want_db = spec::conv2d_grad_bias(s, dy), scale_db = spec::conv2d_grad_bias(s, absolute(dy));
  for (std::size_t i = 0; i < want_db.size(); ++i) {
    want_db[i] += gb0[i];
    scale_db[i] += std::abs(gb0[i]);
  }
  check_sums(db, want_db, scale_db, dtype, "bias gradient");
}

}  // namespace

TEST_CASE("Convolutions of random geometries match the direct sums, forward and backward", "[core][conv]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(1, dtype == DType::Float64);
  for (int i = 0; i < 60; ++i) check_case(random_conv(rng), dtype, i % 2 == 0, rng);
}

TEST_CASE("Convolutions of the shapes a ResNet uses match the direct sums", "[core][conv]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(2);
  // 3x3 same-size, 3x3 stride 2, the 1x1 stride-2 shortcut, a 1x1 stride-1
  // convolution (no lowering), depthwise.
  const spec::Conv cases[] = {
      {2, 8, 12, 12, 8, 3, 3, 1, 1, 1, 1},    {2, 8, 12, 12, 16, 3, 3, 2, 2, 1, 1},
      {2, 8, 12, 12, 16, 1, 1, 2, 2, 0, 0},   {3, 16, 7, 5, 8, 1, 1},
      {2, 6, 9, 9, 6, 3, 3, 1, 1, 1, 1, 1, 1, 6},
  };
  for (const spec::Conv& s : cases) check_case(s, dtype, false, rng);
}

TEST_CASE("The output size follows PyTorch's formula", "[core][conv]") {
  CHECK(core::conv_output_size(28, 3, 1, 1, 1) == 28);
  CHECK(core::conv_output_size(28, 3, 2, 1, 1) == 14);
  CHECK(core::conv_output_size(7, 3, 2, 0, 2) == 2);
  CHECK(core::conv_output_size(5, 1, 3, 0, 1) == 2);
}

TEST_CASE("Convolution rejects mismatched shapes, bad geometry, dtypes and devices", "[core][conv]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const Device d = test_device();
  const Tensor x = Tensor::zeros(Shape{2, 4, 5, 5}, DType::Float32, d);
  const Tensor w = Tensor::zeros(Shape{6, 2, 3, 3}, DType::Float32, d);
  core::Conv2dGeometry g;
  g.groups = 2;
  CHECK(core::conv2d(x, w, Tensor(), g).shape() == Shape{2, 6, 3, 3});

  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor(), core::Conv2dGeometry{}), InvalidArgument,
                       MessageIs("conv2d: input has 4 channels, expected 2 (weight (6, 2, 3, 3) with groups 1)"));
  core::Conv2dGeometry g3 = g;
  g3.groups = 4;
  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor(), g3), InvalidArgument,
                       MessageIs("conv2d: weight has 6 output channels, expected a multiple of groups (4)"));
  core::Conv2dGeometry bad = g;
  bad.stride = {0, 1};
  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor(), bad), InvalidArgument, MessageIs("conv2d: stride 0, expected >= 1"));
  bad = g;
  bad.padding = {0, -1};
  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor(), bad), InvalidArgument,
                       MessageIs("conv2d: padding -1, expected >= 0"));
  bad = g;
  bad.dilation = {3, 3};
  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor(), bad), InvalidArgument,
                       MessageIs("conv2d: padded input is 5x5, expected at least the dilated kernel's 7x7"));
  CHECK_THROWS_MATCHES(core::conv2d(x, w.to(DType::Float64), Tensor(), g), InvalidArgument,
                       MessageIs("conv2d: weight has dtype float64, expected float32 (as input)"));
  CHECK_THROWS_MATCHES(core::conv2d(x.reshape(Shape{2, 4, 25}), w, Tensor(), g), InvalidArgument,
                       MessageIs("conv2d: input has shape (2, 4, 25), expected a 4-D tensor"));
  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor::zeros(Shape{5}, DType::Float32, d), g), InvalidArgument,
                       MessageIs("conv2d: bias has 5 elements, expected 6 (one per output channel)"));
  CHECK_THROWS_MATCHES(
      core::conv2d_backward_input(Tensor::zeros(Shape{2, 6, 4, 3}, DType::Float32, d), w, x.shape(), g),
      InvalidArgument, MessageIs("conv2d_backward_input: grad_output has shape (2, 6, 4, 3), expected (2, 6, 3, 3) (the output's)"));
  const Tensor gw = Tensor::ones(w.shape(), DType::Float32, d);
  CHECK_THROWS_MATCHES(core::conv2d_backward_weight_(gw, Tensor::zeros(Shape{2, 6, 3, 4}, DType::Float32, d), x, g),
                       InvalidArgument,
                       MessageIs("conv2d_backward_weight_: grad_output has shape (2, 6, 3, 4), expected (2, 6, 3, 3) "
                                 "(the output's)"));
  CHECK(gw.to_vector<double>() == std::vector<double>(static_cast<std::size_t>(gw.numel()), 1.0));
  if (!syncbn::testing::test_on_cuda() && d.is_cpu()) {
    CHECK_THROWS_MATCHES(core::conv2d(x, w.to(Device::cpu(1)), Tensor(), g), InvalidArgument,
                         MessageIs("conv2d: weight is on cpu:1, expected cpu:0 (as input)"));
  }
}

TEST_CASE("A build without a BLAS refuses CPU convolutions with Unsupported, naming the package", "[core][conv]") {
  if (syncbn::testing::test_on_cuda() || cpu::has_blas()) SYNCBN_SKIP("this build has a BLAS for CPU convolutions");
  const Tensor x = Tensor::zeros(Shape{1, 1, 3, 3}, DType::Float32, test_device());
  const Tensor w = Tensor::zeros(Shape{1, 1, 3, 3}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor(), core::Conv2dGeometry{}), Unsupported,
                       MessageIs("conv2d: this build of syncbn has no BLAS for CPU convolutions, expected one (install "
                                 "a CBLAS such as Debian's libopenblas-dev and reconfigure)"));
}

TEST_CASE("The BLAS's threads per call can be read and set where the BLAS is OpenBLAS", "[core][conv]") {
  CHECK_THROWS_MATCHES(cpu::set_blas_threads(0), InvalidArgument,
                       MessageIs("cpu::set_blas_threads: threads 0, expected >= 1"));
  const int before = cpu::blas_threads();
  if (before == 0) SYNCBN_SKIP("this build's BLAS (if any) cannot be told its threads");
  REQUIRE(cpu::set_blas_threads(1));
  CHECK(cpu::blas_threads() == 1);
  REQUIRE(cpu::set_blas_threads(before));
  CHECK(cpu::blas_threads() == before);
}
