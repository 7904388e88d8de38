// Channels-last layers and fused activations (BatchNormOptions::layout,
// activation, inplace) for BatchNorm and SyncBatchNorm 1d/2d/3d: training
// steps and eval against the float64 reference of batch norm over the whole
// batch followed by the activation, read in channels-first order, for K =
// 1..8 replicas on uneven and empty shards; the in-place mode writes over the
// input and keeps nothing else; combinations with ghost batches, freeze and
// conversion; option errors leave the state unchanged. Device-generic.

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "support/batch_norm_spec.hpp"
#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/reference.hpp"
#include "support/replica_grads.hpp"
#include "support/seeds.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::check_close;
using syncbn::testing::make_batchnorm;
using syncbn::testing::MessageIs;
using syncbn::testing::take_grad_sum;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;
using syncbn::testing::Tolerance;

namespace {

constexpr Tolerance kFp32{1e-5, 1e-5};
// In place, x - mean comes back from y stored in float32, divided by the scale.
constexpr Tolerance kRecovered{1e-4, 1e-4};

// A channels-first tensor in `layout`, and back.
Tensor in_layout(const Tensor& t, nn::ChannelLayout layout) {
  return layout == nn::ChannelLayout::Last ? core::to_channels_last(t) : t;
}
Tensor first_of(const Tensor& t, nn::ChannelLayout layout) {
  return layout == nn::ChannelLayout::Last ? core::to_channels_first(t) : t;
}

// The reference of a training step: batch norm over the whole batch, then
// the activation; backward through the activation's slope at z.
struct Expected {
  std::vector<double> y, dx, dweight, dbias;
  testing::ref::BnResult bn;
};

Expected fused_reference(const std::vector<double>& x, const std::vector<double>& dy, const std::vector<double>& w,
                         const std::vector<double>& b, std::int64_t n, std::int64_t c, std::int64_t l,
                         const nn::Activation& act) {
  const auto kind = static_cast<int>(act.kind);
  const auto z = testing::ref::batch_norm(x, dy, w, b, n, c, l, {}).y;
  std::vector<double> dz(dy.size());
  Expected e;
  for (std::size_t i = 0; i < z.size(); ++i) {
    e.y.push_back(testing::spec::activate(kind, act.alpha, z[i]));
    dz[i] = dy[i] * testing::spec::activation_slope(kind, act.alpha, z[i]);
  }
  e.bn = testing::ref::batch_norm(x, dz, w, b, n, c, l, {});
  e.dx = e.bn.dx;
  e.dweight = e.bn.dweight;
  e.dbias = e.bn.dbias;
  return e;
}

}  // namespace

TEST_CASE("Channels-last and fused-activation layers equal batch norm then the activation over the whole batch",
          "[nn][layout][activation][levels][threads]") {
  // Channels-first shapes; the layer sees them permuted when channels-last.
  const Shape shape = GENERATE(Shape{12, 5}, Shape{12, 3, 4}, Shape{12, 3, 2, 3}, Shape{12, 2, 2, 2, 3});
  const nn::ChannelLayout layout = GENERATE(nn::ChannelLayout::First, nn::ChannelLayout::Last);
  const auto [act, inplace] = GENERATE(std::tuple{nn::Activation::identity(), false},
                                       std::tuple{nn::Activation::relu(), false},
                                       std::tuple{nn::Activation::leaky_relu(0.2), true},
                                       std::tuple{nn::Activation::elu(1.0), true},
                                       std::tuple{nn::Activation::identity(), true});
  const auto [sync, split] = GENERATE(std::tuple{false, std::vector<std::int64_t>{12}},
                                      std::tuple{true, std::vector<std::int64_t>{12}},
                                      std::tuple{true, std::vector<std::int64_t>{5, 0, 7}},
                                      std::tuple{true, std::vector<std::int64_t>{1, 2, 1, 3, 0, 2, 2, 1}});
  CAPTURE(shape, core::channel_layout_name(layout), act.name(), inplace, sync, split.size(), syncbn::testing::kSeed);
  const std::int64_t n = shape[0], c = shape[1], l = syncbn::testing::spatial_size(shape);
  nn::BatchNormOptions options;
  options.layout = layout;
  options.activation = act;
  options.inplace = inplace;
  options.device = test_device();
  auto layer = make_batchnorm(sync, syncbn::testing::spatial_dims_of(shape), c, options);
  layer->weight().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 300, DType::Float32, test_device(), 1.0, 0.3));
  layer->bias().value.copy_(Tensor::randn(Shape{c}, syncbn::testing::kSeed + 301, DType::Float32, test_device(), 0.2, 0.5));
  const auto w = layer->weight().value.to_vector<double>(), b = layer->bias().value.to_vector<double>();
  const Tolerance tol = inplace ? kRecovered : kFp32;
  const testing::ref::BnConfig cfg{};
  std::vector<double> rm(static_cast<std::size_t>(c), 0.0), rv(static_cast<std::size_t>(c), 1.0);

  const auto devices = test_devices(static_cast<int>(split.size()));
  auto replicas = parallel::replicate(*layer, devices);
  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    const auto seed = syncbn::testing::kSeed + 310 + 2 * static_cast<std::uint64_t>(step);
    const Tensor x = Tensor::randn(shape, seed, DType::Float32, test_device(), 0.5, 2.0);
    const Tensor dy = Tensor::randn(shape, seed + 1, DType::Float32, test_device());
    const Expected want = fused_reference(x.to_vector<double>(), dy.to_vector<double>(), w, b, n, c, l, act);
    const auto outputs = parallel::parallel_apply(replicas, parallel::scatter(in_layout(x, layout), devices, split));
    const auto grads = parallel::parallel_backward(replicas, parallel::scatter(in_layout(dy, layout), devices, split));
    const Tensor y = parallel::gather(outputs, test_device());
    CHECK(y.shape() == in_layout(x, layout).shape());
    check_close(first_of(y, layout), want.y, kFp32, "output");
    check_close(first_of(parallel::gather(grads, test_device()), layout), want.dx, tol, "grad_input");
    check_close(take_grad_sum(replicas, 0), want.dweight, tol, "grad_weight summed over replicas");
    check_close(take_grad_sum(replicas, 1), want.dbias, kFp32, "grad_bias summed over replicas");
    testing::ref::update_running(rm, rv, want.bn, cfg, step);
    check_close(layer->running_mean(), rm, kFp32, "running_mean");
    check_close(layer->running_var(), rv, kFp32, "running_var");
    replicas = parallel::replicate(*layer, devices);
  }

  // Eval: the running statistics, then the activation.
  layer->eval();
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 320, DType::Float32, test_device(), 0.5, 2.0);
  const auto z = testing::ref::batch_norm_eval(x.to_vector<double>(), w, b, rm, rv, n, c, l, cfg);
  std::vector<double> want_y;
  for (const double v : z) want_y.push_back(testing::spec::activate(static_cast<int>(act.kind), act.alpha, v));
  check_close(first_of(layer->forward(in_layout(x, layout)), layout), want_y, kFp32, "eval output");
}

TEST_CASE("In place, the output overwrites the input and backward needs nothing else", "[nn][activation]") {
  const nn::ChannelLayout layout = GENERATE(nn::ChannelLayout::First, nn::ChannelLayout::Last);
  const std::int64_t v = GENERATE(std::int64_t{0}, std::int64_t{3});  // with ghost batches too
  CAPTURE(core::channel_layout_name(layout), v);
  nn::BatchNormOptions options;
  options.layout = layout;
  options.activation = nn::Activation::leaky_relu(0.1);
  options.virtual_batch_size = v;
  options.device = test_device();
  nn::BatchNorm2d plain(3, options);
  options.inplace = true;
  nn::BatchNorm2d in_place(3, options);
  const Shape shape = layout == nn::ChannelLayout::Last ? Shape{6, 4, 5, 3} : Shape{6, 3, 4, 5};
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed + 330, DType::Float32, test_device(), 0.3, 1.5);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 331, DType::Float32, test_device());
  const Tensor y_plain = plain.forward(x);
  const Tensor dx_plain = plain.backward(dy);

  const Tensor x_copy = x.clone();
  const Tensor y = in_place.forward(x_copy);
  CHECK(y.raw_data() == x_copy.raw_data());  // one buffer: the input's
  CHECK(x_copy.to_vector<double>() == y_plain.to_vector<double>());
  const Tensor dx = in_place.backward(dy);
  check_close(dx, dx_plain.to_vector<double>(), kRecovered, "grad_input from the output");
  check_close(in_place.weight().grad, plain.weight().grad.to_vector<double>(), kRecovered, "grad_weight");
  check_close(in_place.bias().grad, plain.bias().grad.to_vector<double>(), kFp32, "grad_bias");
}

TEST_CASE("In place with a zero weight is refused before the input is touched", "[nn][activation]") {
  nn::BatchNormOptions options;
  options.activation = nn::Activation::elu();
  options.inplace = true;
  options.device = test_device();
  nn::SyncBatchNorm2d layer(3, options, 2s);
  layer.weight().value.copy_(Tensor::from_vector(std::vector<double>{1.0, 0.0, 2.0}, Shape{3}, test_device()).to(DType::Float32));
  const Tensor x = Tensor::randn(Shape{4, 3, 2, 2}, syncbn::testing::kSeed + 340, DType::Float32, test_device());
  const auto before = x.to_vector<double>();
  CHECK_THROWS_MATCHES(layer.forward(x), InvalidArgument,
                       MessageIs("SyncBatchNorm2d: inplace recovers the input through each channel's weight, expected "
                                 "non-zero weights, got 0 in channel 1"));
  CHECK(x.to_vector<double>() == before);
  CHECK(layer.num_batches_tracked().item() == 0);
}

TEST_CASE("Layout and activation options are checked, described and kept by conversion", "[nn][layout][activation]") {
  nn::BatchNormOptions options;
  options.inplace = true;
  options.activation = nn::Activation::relu();
  CHECK_THROWS_MATCHES(nn::BatchNorm2d(4, options), InvalidArgument,
                       MessageIs("BatchNorm2d: inplace recovers the input from the output, expected an invertible "
                                 "activation (identity, leaky_relu with a slope > 0, elu), got relu"));
  options.inplace = false;
  options.activation = nn::Activation::elu(-1.0);
  CHECK_THROWS_MATCHES(nn::SyncBatchNorm3d(4, options), InvalidArgument,
                       MessageIs("SyncBatchNorm3d: activation elu alpha -1, expected a finite alpha > 0"));
  options.activation = nn::Activation::leaky_relu(0.05);
  options.layout = nn::ChannelLayout::Last;
  options.device = test_device();
  auto bn = std::make_shared<nn::BatchNorm2d>(4, options);
  CHECK(bn->describe() ==
        "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true, layout=channels_last, "
        "activation=leaky_relu(0.05))");
  // Channels-last input is (N, H, W, C): a channels-first batch is refused.
  CHECK_THROWS_MATCHES(bn->forward(Tensor::zeros(Shape{2, 4, 3, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("BatchNorm2d: input has 3 channels (last dimension), expected 4"));
  CHECK_THROWS_MATCHES(bn->forward(Tensor::zeros(Shape{2, 4, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("BatchNorm2d: expected 4-D input (N, H, W, C), got 3-D input"));
  CHECK(bn->num_batches_tracked().item() == 0);
  const auto converted = std::dynamic_pointer_cast<nn::BatchNorm>(nn::convert_sync_batchnorm(bn));
  REQUIRE(converted);
  CHECK(converted->kind() == "SyncBatchNorm2d");
  CHECK(converted->form().layout == nn::ChannelLayout::Last);
  CHECK(converted->form().activation.kind == core::ActivationKind::LeakyRelu);
  const auto reverted = std::dynamic_pointer_cast<nn::BatchNorm>(nn::revert_sync_batchnorm(converted));
  REQUIRE(reverted);
  CHECK(reverted->describe() == bn->describe());
}
