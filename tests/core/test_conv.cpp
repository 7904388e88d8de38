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
#include "support/conv_checks.hpp"
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
using syncbn::testing::check_conv_case;
using syncbn::testing::random_conv;
using syncbn::testing::test_device;

TEST_CASE("Convolutions of random geometries match the direct sums, forward and backward", "[core][conv]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(1, dtype == DType::Float64);
  for (int i = 0; i < 60; ++i) check_conv_case(random_conv(rng), dtype, i % 2 == 0, rng);
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
  for (const spec::Conv& s : cases) check_conv_case(s, dtype, false, rng);
}

TEST_CASE("Channels-last convolutions match the direct sums on the same geometries", "[core][conv][channels-last]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype, test_device());
  std::mt19937_64 rng = syncbn::testing::make_rng(3, dtype == DType::Float64);
  for (int i = 0; i < 60; ++i) check_conv_case(random_conv(rng), dtype, i % 2 == 0, rng, core::ChannelLayout::Last);
  // The ResNet's shapes: 3x3 same-size and strided, the 1x1 strided
  // shortcut, a 1x1 stride-1 layer (one product for the whole batch), depthwise.
  const spec::Conv cases[] = {
      {2, 8, 12, 12, 8, 3, 3, 1, 1, 1, 1},    {2, 8, 12, 12, 16, 3, 3, 2, 2, 1, 1},
      {2, 8, 12, 12, 16, 1, 1, 2, 2, 0, 0},   {3, 16, 7, 5, 8, 1, 1},
      {2, 6, 9, 9, 6, 3, 3, 1, 1, 1, 1, 1, 1, 6},
  };
  for (const spec::Conv& s : cases) check_conv_case(s, dtype, true, rng, core::ChannelLayout::Last);
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
  // Channels-last: the channels are the last dimension, in messages too.
  core::Conv2dGeometry last = g;
  last.layout = core::ChannelLayout::Last;
  const Tensor x_last = Tensor::zeros(Shape{2, 5, 5, 4}, DType::Float32, d);
  CHECK(core::conv2d(x_last, w, Tensor(), last).shape() == Shape{2, 3, 3, 6});
  CHECK_THROWS_MATCHES(core::conv2d(x, w, Tensor(), last), InvalidArgument,
                       MessageIs("conv2d: input has 5 channels, expected 4 (weight (6, 2, 3, 3) with groups 2, input "
                                 "channels-last)"));
  CHECK_THROWS_MATCHES(
      core::conv2d_backward_input(Tensor::zeros(Shape{2, 6, 3, 3}, DType::Float32, d), w, x_last.shape(), last),
      InvalidArgument,
      MessageIs("conv2d_backward_input: grad_output has shape (2, 6, 3, 3), expected (2, 3, 3, 6) (the output's)"));
  const Tensor gb = Tensor::ones(Shape{6}, DType::Float32, d);
  CHECK_THROWS_MATCHES(core::conv2d_backward_bias_(gb, Tensor::zeros(Shape{2, 6, 3, 3}, DType::Float32, d),
                                                   core::ChannelLayout::Last),
                       InvalidArgument,
                       MessageIs("conv2d_backward_bias_: grad_output has 3 channels (channels-last), expected 6 (as "
                                 "grad_bias)"));
  CHECK(gb.to_vector<double>() == std::vector<double>(6, 1.0));
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
