// Per-replica BatchNorm1d/2d/3d against the float64 reference: outputs,
// gradients, running statistics, modes, edge cases and errors.

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <optional>
#include <string>

#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/batch_norm.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::Tolerance;

namespace {

struct Layout {
  std::string name;
  Shape shape;
};

constexpr Tolerance kFp32{1e-5, 1e-5};

}  // namespace

TEST_CASE("BatchNorm matches the float64 reference over several training steps and in eval", "[nn][levels]") {
  const Layout layout = GENERATE(Layout{"1d (N, C)", Shape{13, 5}}, Layout{"1d (N, C, L)", Shape{6, 4, 7}},
                                 Layout{"2d", Shape{5, 3, 4, 6}}, Layout{"3d", Shape{3, 2, 3, 4, 5}});
  const bool affine = GENERATE(true, false);
  const std::optional<double> momentum = GENERATE(std::optional<double>(0.1), std::optional<double>(1.0),
                                                  std::optional<double>());
  const bool clamp = GENERATE(false, true);
  CAPTURE(layout.name, affine, momentum.value_or(-1), clamp, syncbn::testing::kSeed);

  const std::int64_t n = layout.shape[0], c = layout.shape[1], l = syncbn::testing::spatial_size(layout.shape);
  nn::BatchNormOptions options;
  options.momentum = momentum;
  options.affine = affine;
  options.eps_mode = clamp ? nn::EpsMode::Clamp : nn::EpsMode::Plus;
  options.device = test_device();
  auto bn = syncbn::testing::make_batchnorm(false, syncbn::testing::spatial_dims_of(layout.shape), c, options);
  if (affine) {  // non-trivial affine parameters
    bn->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 50, DType::Float32, test_device(), 1.0, 0.5));
    bn->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 51, DType::Float32, test_device()));
  }
  const auto wv = affine ? bn->weight().value.to_vector<double>() : std::vector<double>{};
  const auto bv = affine ? bn->bias().value.to_vector<double>() : std::vector<double>{};
  testing::ref::BnConfig cfg{1e-5, momentum, clamp};
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);

  for (int step = 1; step <= 3; ++step) {
    INFO("training step " << step);
    const Tensor x = Tensor::randn(layout.shape, syncbn::testing::kSeed + static_cast<std::uint64_t>(step),
                                   DType::Float32, test_device(), 3.0, 2.0);
    const Tensor dy = Tensor::randn(layout.shape, syncbn::testing::kSeed + 100 + static_cast<std::uint64_t>(step),
                                    DType::Float32, test_device());
    const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), wv, bv, n, c, l, cfg);
    bn->zero_grad();
    check_close(bn->forward(x), r.y, kFp32, "y");
    check_close(bn->backward(dy), r.dx, kFp32, "dx");
    if (affine) {
      check_close(bn->weight().grad, r.dweight, kFp32, "dweight");
      check_close(bn->bias().grad, r.dbias, kFp32, "dbias");
    }
    testing::ref::update_running(rm, rv, r, cfg, step);
    check_close(bn->running_mean(), rm, kFp32, "running_mean");
    check_close(bn->running_var(), rv, kFp32, "running_var");
    CHECK(bn->num_batches_tracked().item() == step);
  }

  bn->eval();
  const Tensor x = Tensor::randn(layout.shape, syncbn::testing::kSeed + 9, DType::Float32, test_device(), 3.0, 2.0);
  check_close(bn->forward(x), testing::ref::batch_norm_eval(x.to_vector<double>(), wv, bv, rm, rv, n, c, l, cfg), kFp32,
              "eval output");
  CHECK(bn->num_batches_tracked().item() == 3);  // eval does not count
  // Eval backward: statistics are constants, dx = dy * w / sqrt(rv + eps).
  const Tensor dy = Tensor::ones(layout.shape, DType::Float32, test_device());
  const auto dx = bn->backward(dy).to_vector<double>();
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const auto u = static_cast<std::size_t>(j);
      const double want = (affine ? wv[u] : 1.0) / std::sqrt(clamp ? std::max(rv[u], 1e-5) : rv[u] + 1e-5);
      REQUIRE_THAT(dx[static_cast<std::size_t>((i * c + j) * l)],
                   Catch::Matchers::WithinRel(want, 1e-5) || Catch::Matchers::WithinAbs(want, 1e-5));
    }
}

TEST_CASE("BatchNorm is accurate when the mean is 1e4 times the standard deviation", "[nn][levels]") {
  const Shape shape{16, 3, 8, 8};
  nn::BatchNorm2d bn(3, nn::BatchNormOptions{.device = test_device()});
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, test_device(), 1e4, 1.0);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float32, test_device());
  const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), {}, {}, 16, 3, 64, {});
  check_close(bn.forward(x), r.y, kFp32, "y");
  check_close(bn.backward(dy), r.dx, kFp32, "dx");
  std::vector<double> rm(3, 0.0), rv(3, 1.0);
  testing::ref::update_running(rm, rv, r, {}, 1);
  check_close(bn.running_mean(), rm, kFp32, "running_mean");
  check_close(bn.running_var(), rv, kFp32, "running_var");
}

TEST_CASE("BatchNorm matches the reference on shapes that take every vectorised CPU path", "[nn][levels]") {
  // The small cases above never fill a float32 lane's 32 additions or a
  // column block. These do: (N, C) with several flush periods, a partial
  // tile and period, and channels in 4-vector blocks, in a 1-vector block and
  // past the last vector (77 = 2 * 32 + 8 + 5); (N, C, L) runs longer than
  // one flush period, with leftover vectors and odd elements, accumulated
  // across samples; runs of 9 (one vector and one odd element each) whose
  // vectors rotate over the accumulators; and a 2-D image.
  const Layout layout = GENERATE(Layout{"(N, C) 103x77", Shape{103, 77}}, Layout{"(N, C, L) long runs", Shape{3, 5, 1517}},
                                 Layout{"(N, C, L) runs of 9", Shape{600, 3, 9}}, Layout{"2d", Shape{4, 3, 33, 35}});
  const double mean = GENERATE(3.0, 1e4);
  CAPTURE(layout.name, mean, syncbn::testing::kSeed);
  const std::int64_t n = layout.shape[0], c = layout.shape[1], l = syncbn::testing::spatial_size(layout.shape);
  auto bn = syncbn::testing::make_batchnorm(false, syncbn::testing::spatial_dims_of(layout.shape), c,
                                            nn::BatchNormOptions{.device = test_device()});
  bn->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 50, DType::Float32, test_device(), 1.0, 0.5));
  bn->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 51, DType::Float32, test_device()));
  const Tensor x = Tensor::randn(layout.shape, syncbn::testing::kSeed + 3, DType::Float32, test_device(), mean, 2.0);
  const Tensor dy = Tensor::randn(layout.shape, syncbn::testing::kSeed + 4, DType::Float32, test_device());
  const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(),
                                          bn->weight().value.to_vector<double>(), bn->bias().value.to_vector<double>(),
                                          n, c, l, {});
  check_close(bn->forward(x), r.y, kFp32, "y");
  check_close(bn->backward(dy), r.dx, kFp32, "dx");
  // grad_weight and grad_bias sum n * l products of order 1 whose total can
  // cancel: their float32 rounding is bounded by a random walk over the
  // count, not by the result's size.
  const Tolerance sums{1e-5, 1e-6 * std::sqrt(static_cast<double>(n * l))};
  check_close(bn->weight().grad, r.dweight, sums, "dweight");
  check_close(bn->bias().grad, r.dbias, sums, "dbias");
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);
  testing::ref::update_running(rm, rv, r, {}, 1);
  check_close(bn->running_mean(), rm, kFp32, "running_mean");
  check_close(bn->running_var(), rv, kFp32, "running_var");
}

TEST_CASE("BatchNorm takes float16 and bfloat16 input through its staged paths", "[nn][levels]") {
  // 16-bit inputs are converted to float32 in chunks of 1024 values: (N, C)
  // rows wider than a chunk (the second chunk starts mid-row, with leftover
  // vectors and odd channels) and (N, C, L) runs longer than one.
  const Layout layout = GENERATE(Layout{"(N, C) 37x1100", Shape{37, 1100}}, Layout{"(N, C, L) 5x3x1500", Shape{5, 3, 1500}});
  const DType dtype = GENERATE(DType::Float16, DType::BFloat16);
  CAPTURE(layout.name, dtype, syncbn::testing::kSeed);
  const std::int64_t n = layout.shape[0], c = layout.shape[1], l = syncbn::testing::spatial_size(layout.shape);
  nn::BatchNorm1d bn(c, nn::BatchNormOptions{.device = test_device()});
  bn.weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 60, DType::Float32, test_device(), 1.0, 0.5));
  bn.bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 61, DType::Float32, test_device()));
  const Tensor x = Tensor::randn(layout.shape, syncbn::testing::kSeed + 5, DType::Float32, test_device(), 2.0, 3.0).to(dtype);
  const Tensor dy = Tensor::randn(layout.shape, syncbn::testing::kSeed + 6, DType::Float32, test_device()).to(dtype);
  // The reference sees the same rounded inputs, in float64.
  const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(),
                                          bn.weight().value.to_vector<double>(), bn.bias().value.to_vector<double>(), n,
                                          c, l, {});
  const Tensor y = bn.forward(x);
  CHECK(y.dtype() == dtype);
  check_close(y, r.y, syncbn::testing::tolerance_for(dtype), "y");
  check_close(bn.backward(dy), r.dx, syncbn::testing::tolerance_for(dtype), "dx");
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);
  testing::ref::update_running(rm, rv, r, {}, 1);
  check_close(bn.running_mean(), rm, kFp32, "running_mean");
  check_close(bn.running_var(), rv, kFp32, "running_var");
}

TEST_CASE("BatchNorm in float64 matches the reference to float64 precision", "[nn][levels]") {
  // (N, C) 70x37: float64 column blocks of 16 channels, one of 4, one odd channel.
  const Shape shape = GENERATE(Shape{7, 3, 5}, Shape{70, 37});
  CAPTURE(shape.str());
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape);
  nn::BatchNorm1d bn(c, nn::BatchNormOptions{.dtype = DType::Float64, .device = test_device()});
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float64, test_device(), -2.0, 3.0);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float64, test_device());
  const auto r = testing::ref::batch_norm(x.to_vector<double>(), dy.to_vector<double>(), {}, {}, n, c, l, {});
  check_close(bn.forward(x), r.y, {1e-12, 1e-12}, "y");
  check_close(bn.backward(dy), r.dx, {1e-12, 1e-12}, "dx");
}

TEST_CASE("Clamp mode keeps a NaN running variance NaN in eval", "[nn]") {
  // The spec is max(var, eps) with var first: a NaN variance stays NaN (as
  // the original's clamp does) rather than turning into eps.
  nn::BatchNorm1d bn(2, nn::BatchNormOptions{.eps_mode = nn::EpsMode::Clamp, .device = test_device()});
  bn.running_var().copy_(Tensor::from_vector(std::vector<float>{std::nanf(""), 4.0f}, Shape{2}, test_device()));
  bn.eval();
  const auto y = bn.forward(Tensor::ones(Shape{3, 2}, DType::Float32, test_device())).to_vector<float>();
  for (int i = 0; i < 3; ++i) {
    CHECK(std::isnan(y[static_cast<std::size_t>(2 * i)]));
    CHECK(y[static_cast<std::size_t>(2 * i + 1)] == 0.5f);  // (1 - 0) / sqrt(4), exact
  }
}

TEST_CASE("BatchNorm without running statistics uses batch statistics in eval too", "[nn]") {
  nn::BatchNorm1d bn(4, nn::BatchNormOptions{.track_running_stats = false, .device = test_device()});
  CHECK(bn.named_buffers().empty());
  const Tensor x = Tensor::randn(Shape{9, 4}, syncbn::testing::kSeed, DType::Float32, test_device(), 5.0, 3.0);
  const auto y_train = bn.forward(x).to_vector<float>();
  bn.eval();
  CHECK(bn.forward(x).to_vector<float>() == y_train);
  CHECK_THROWS_MATCHES(bn.running_mean(), InvalidArgument,
                       MessageIs("BatchNorm1d: the layer does not track running statistics, expected a layer that does "
                                 "(BatchNormOptions::track_running_stats)"));
}

TEST_CASE("One value per channel in training is rejected and leaves the state unchanged", "[nn]") {
  nn::BatchNorm1d bn(3, nn::BatchNormOptions{.device = test_device()});
  bn.forward(Tensor::randn(Shape{4, 3}, syncbn::testing::kSeed, DType::Float32, test_device()));
  const auto rm = bn.running_mean().to_vector<float>();
  const auto rv = bn.running_var().to_vector<float>();
  CHECK_THROWS_MATCHES(
      bn.forward(Tensor::ones(Shape{1, 3}, DType::Float32, test_device())), InvalidArgument,
      MessageIs("BatchNorm1d: expected more than 1 value per channel when training, got 1 (input of 3 channels with "
                "one value each over the whole batch)"));
  CHECK(bn.running_mean().to_vector<float>() == rm);
  CHECK(bn.running_var().to_vector<float>() == rv);
  CHECK(bn.num_batches_tracked().item() == 1);
  bn.eval();
  CHECK(bn.forward(Tensor::ones(Shape{1, 3}, DType::Float32, test_device())).numel() == 3);  // fine in eval
}

TEST_CASE("One value per channel is rejected in eval when the layer keeps no running statistics", "[nn]") {
  // Batch statistics of one value have variance 0, so y would be the bias
  // whatever the input; PyTorch refuses it in this mode too.
  nn::BatchNorm1d bn(3, nn::BatchNormOptions{.track_running_stats = false, .device = test_device()});
  bn.eval();
  CHECK_THROWS_MATCHES(bn.forward(Tensor::ones(Shape{1, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("BatchNorm1d: expected more than 1 value per channel for batch statistics "
                                 "(track_running_stats is off), got 1 (input of 3 channels with one value each over "
                                 "the whole batch)"));
  CHECK(bn.forward(Tensor::ones(Shape{2, 3}, DType::Float32, test_device())).numel() == 6);
}

TEST_CASE("An empty batch gives an empty output, counts as a batch and changes no running statistic", "[nn]") {
  // As in PyTorch: num_batches_tracked counts the empty batch, so that a
  // cumulative average (momentum none) weighs the next batch by 1/2.
  nn::BatchNorm2d bn(2, nn::BatchNormOptions{.momentum = std::nullopt, .device = test_device()});
  const Tensor y = bn.forward(Tensor::zeros(Shape{0, 2, 3, 3}, DType::Float32, test_device()));
  CHECK(y.shape() == Shape{0, 2, 3, 3});
  CHECK(bn.num_batches_tracked().item() == 1);
  CHECK(bn.running_mean().to_vector<float>() == std::vector<float>{0, 0});
  CHECK(bn.running_var().to_vector<float>() == std::vector<float>{1, 1});
  CHECK(bn.backward(Tensor::zeros(Shape{0, 2, 3, 3}, DType::Float32, test_device())).numel() == 0);
  CHECK(bn.weight().grad.to_vector<float>() == std::vector<float>{0, 0});
  // Channel 0 holds 2 and 4 (mean 3, unbiased variance 2), channel 1 holds 10
  // twice: the cumulative average takes half of each (all exact in float32).
  bn.forward(Tensor::from_vector(std::vector<float>{2, 10, 4, 10}, Shape{2, 2, 1, 1}, test_device()));
  CHECK(bn.num_batches_tracked().item() == 2);
  CHECK(bn.running_mean().to_vector<float>() == std::vector<float>{1.5f, 5.0f});
  CHECK(bn.running_var().to_vector<float>() == std::vector<float>{1.5f, 0.5f});
}

TEST_CASE("A NaN input gives NaN running statistics in its channel only", "[nn]") {
  // As in PyTorch: the variance of a channel with a NaN is NaN, not clamped
  // to 0 (which gave a finite running variance with one replica only).
  const Shape shape = GENERATE(Shape{6, 3}, Shape{4, 3, 5});
  INFO("shape " << shape);
  nn::BatchNorm1d bn(3, nn::BatchNormOptions{.device = test_device()});
  auto values = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, test_device()).to_vector<float>();
  values[static_cast<std::size_t>(shape.numel() / shape[0])] = std::nanf("");  // sample 1, channel 0
  bn.forward(Tensor::from_vector(values, shape, test_device()));
  const auto rm = bn.running_mean().to_vector<float>();
  const auto rv = bn.running_var().to_vector<float>();
  CHECK(std::isnan(rm[0]));
  CHECK(std::isnan(rv[0]));
  for (std::size_t j = 1; j < 3; ++j) {
    CHECK(std::isfinite(rm[j]));
    CHECK(std::isfinite(rv[j]));
  }
}

TEST_CASE("BatchNorm rejects inputs of the wrong rank, channels, dtype or device", "[nn]") {
  nn::BatchNorm2d bn(4, nn::BatchNormOptions{.device = test_device()});
  CHECK_THROWS_MATCHES(bn.forward(Tensor::zeros(Shape{2, 4, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("BatchNorm2d: expected 4-D input (N, C, H, W), got 3-D input"));
  CHECK_THROWS_MATCHES(bn.forward(Tensor::zeros(Shape{2, 3, 2, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("BatchNorm2d: input has 3 channels, expected 4"));
  CHECK_THROWS_MATCHES(bn.forward(Tensor::zeros(Shape{2, 4, 2, 2}, DType::Float64, test_device())), InvalidArgument,
                       MessageIs("BatchNorm2d: input has dtype float64, expected float32, float16 or bfloat16 "
                                 "(parameters are float32)"));
  const Device other = syncbn::testing::test_on_cuda() ? Device::cpu(0) : Device::cpu(1);
  CHECK_THROWS_MATCHES(bn.forward(Tensor::zeros(Shape{2, 4, 2, 2}, DType::Float32, other)), InvalidArgument,
                       MessageIs("BatchNorm2d: input is on " + other.str() + ", expected " + test_device().str() +
                                 " (the device of its parameters)"));
  nn::BatchNorm1d bn1(4, nn::BatchNormOptions{.device = test_device()});
  CHECK_THROWS_MATCHES(bn1.forward(Tensor::zeros(Shape{2, 4, 2, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("BatchNorm1d: expected 2-D (N, C) or 3-D (N, C, L) input, got 4-D input"));
  nn::BatchNorm3d bn3(4, nn::BatchNormOptions{.device = test_device()});
  CHECK_THROWS_MATCHES(bn3.forward(Tensor::zeros(Shape{2, 4, 2, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("BatchNorm3d: expected 5-D input (N, C, D, H, W), got 4-D input"));
  CHECK(bn.num_batches_tracked().item() == 0);  // nothing ran
  CHECK_THROWS_AS(nn::BatchNorm2d(0), InvalidArgument);
  CHECK_THROWS_AS(nn::BatchNorm2d(3, nn::BatchNormOptions{.momentum = 1.5}), InvalidArgument);
  CHECK(bn.describe() == "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true)");
}
