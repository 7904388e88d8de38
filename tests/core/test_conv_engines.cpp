// The CPU convolution engines (cpu::ConvEngine; Note [Choosing a convolution
// engine] in src/core/cpu/conv_engines.cpp): each pinned engine against the
// direct sums of support/conv_spec.hpp on random geometries (strides,
// padding, dilation, groups, bias, empty batches), float32; Auto's
// measured choice per layer shape and stage, made once, and the BLAS's
// threads it leaves (Note [One pool of threads beside oneDNN]); the
// setting's errors; the weights kept under cpu::FrozenConvWeights (Note
// [Frozen weights] in src/core/cpu/conv_onednn.cpp). CTest runs the [engines] cases again with oneDNN held
// to AVX2 and to SSE4.1 (ONEDNN_MAX_CPU_ISA), since oneDNN picks its
// kernels by itself, not by SYNCBN_CPU_CAPABILITY.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/compare.hpp"
#include "support/conv_checks.hpp"
#include "support/convolutions.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "syncbn/core/conv.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
namespace spec = syncbn::testing::spec;
using syncbn::testing::check_close;
using syncbn::testing::check_conv_case;
using syncbn::testing::kSeed;
using syncbn::testing::MessageIs;
using syncbn::testing::random_conv;
using syncbn::testing::test_device;
using syncbn::testing::Tolerance;

namespace {

// Pins an engine for the scope; restores the setting after.
class PinnedEngine {
 public:
  explicit PinnedEngine(cpu::ConvEngine engine) : before_(cpu::conv_engine()) { cpu::set_conv_engine(engine); }
  ~PinnedEngine() { cpu::set_conv_engine(before_); }
  PinnedEngine(const PinnedEngine&) = delete;
  PinnedEngine& operator=(const PinnedEngine&) = delete;

 private:
  cpu::ConvEngine before_;
};

std::vector<cpu::ConvEngine> engines_of_this_build() {
  std::vector<cpu::ConvEngine> engines;
  if (cpu::has_blas()) engines.push_back(cpu::ConvEngine::Im2col);
  if (cpu::has_onednn()) engines.push_back(cpu::ConvEngine::OneDnn);
  return engines;
}

}  // namespace

TEST_CASE("Each CPU convolution engine matches the direct sums on random geometries", "[core][conv][engines]") {
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("the CPU engines: nothing to test on " << test_device());
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  // NCHW, and NHWC where oneDNN reads the activations as they are.
  const core::ChannelLayout layout = GENERATE(core::ChannelLayout::First, core::ChannelLayout::Last);
  for (const cpu::ConvEngine engine : engines_of_this_build()) {
    const std::string name(cpu::conv_engine_name(engine));
    CAPTURE(kSeed, name, core::channel_layout_name(layout));
    const PinnedEngine pinned(engine);
    std::mt19937_64 rng = syncbn::testing::make_rng(7);
    for (int i = 0; i < 60; ++i) check_conv_case(random_conv(rng), DType::Float32, i % 2 == 0, rng, layout);
    // A ResNet's 3x3 layers with enough channels for oneDNN's blocked
    // kernels, the strided one, and a 1x1 shortcut.
    const spec::Conv resnet[] = {{2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1},
                                 {2, 16, 8, 8, 32, 3, 3, 2, 2, 1, 1},
                                 {2, 16, 8, 8, 32, 1, 1, 2, 2, 0, 0}};
    for (const spec::Conv& s : resnet) check_conv_case(s, DType::Float32, false, rng, layout);
  }
}

TEST_CASE("Auto measures both engines once per layer shape and stage and keeps the faster", "[core][conv][engines]") {
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("the CPU engines: nothing to test on " << test_device());
  if (!cpu::has_onednn() || !cpu::has_blas()) SYNCBN_SKIP("this build has one CPU convolution engine, nothing to choose");
  const PinnedEngine pinned(cpu::ConvEngine::Auto);
  cpu::clear_conv_engine_choices();
  const Tensor x = Tensor::randn(Shape{2, 16, 9, 9}, kSeed), w = Tensor::randn(Shape{32, 16, 3, 3}, kSeed + 1);
  const core::Conv2dGeometry g{{2, 2}, {1, 1}, {1, 1}, 1};
  for (int step = 0; step < 3; ++step) {
    const Tensor y = core::conv2d(x, w, Tensor(), g);
    const Tensor dx = core::conv2d_backward_input(y, w, x.shape(), g);
    core::conv2d_backward_weight_(Tensor::zeros(w.shape()), y, x, g);
  }
  const std::vector<cpu::ConvChoice> choices = cpu::conv_engine_choices();
  REQUIRE(choices.size() == 3);  // one per stage, made at the first step only
  const std::vector<std::string> stages{"forward", "input gradient", "weight gradient"};
  for (std::size_t i = 0; i < choices.size(); ++i) {
    const cpu::ConvChoice& c = choices[i];
    INFO(c.stage << ": " << cpu::conv_engine_name(c.engine) << ", im2col " << c.im2col_ms << " ms, onednn "
                 << c.onednn_ms << " ms");
    CHECK(c.layer == "2x16x9x9 -> 32, 3x3, stride 2x2, padding 1x1, dilation 1x1, groups 1");
    CHECK(c.stage == stages[i]);
    CHECK(c.im2col_ms > 0);
    CHECK(c.onednn_ms > 0);
    CHECK(c.engine == (c.onednn_ms < c.im2col_ms ? cpu::ConvEngine::OneDnn : cpu::ConvEngine::Im2col));
  }
  // Another batch size is another shape; float64 never asks.
  (void)core::conv2d(Tensor::randn(Shape{3, 16, 9, 9}, kSeed), w, Tensor(), g);
  (void)core::conv2d(x.to(DType::Float64), w.to(DType::Float64), Tensor(), g);
  CHECK(cpu::conv_engine_choices().size() == 4);
  cpu::clear_conv_engine_choices();
  CHECK(cpu::conv_engine_choices().empty());
}

TEST_CASE("Auto's search leaves the BLAS one thread per call unless the user chose its threads",
          "[core][conv][engines][threads]") {
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("the CPU engines: nothing to test on " << test_device());
  if (!cpu::has_onednn() || !cpu::has_blas()) SYNCBN_SKIP("this build has one CPU convolution engine, nothing to choose");
  if (cpu::blas_threads() == 0) SYNCBN_SKIP("this build's BLAS cannot be told its threads");
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("GOTO_NUM_THREADS") != nullptr)
    SYNCBN_SKIP("OPENBLAS_NUM_THREADS or GOTO_NUM_THREADS is set: the search keeps the user's choice");
  const int before = cpu::blas_threads();
  const Tensor x = Tensor::randn(Shape{2, 8, 7, 7}, kSeed), w = Tensor::randn(Shape{8, 8, 3, 3}, kSeed + 1);
  const core::Conv2dGeometry g{{1, 1}, {1, 1}, {1, 1}, 1};
  {
    const PinnedEngine pinned(cpu::ConvEngine::Im2col);
    REQUIRE(cpu::set_blas_threads(2));
    (void)core::conv2d(x, w, Tensor(), g);
    CHECK(cpu::blas_threads() == 2);  // no search, no change
  }
  {
    const PinnedEngine pinned(cpu::ConvEngine::Auto);
    cpu::clear_conv_engine_choices();
    (void)core::conv2d(x, w, Tensor(), g);
    CHECK(cpu::conv_engine_choices().size() == 1);
    CHECK(cpu::blas_threads() == 1);  // the search gave the cores to oneDNN's OpenMP threads
    REQUIRE(cpu::set_blas_threads(2));
    (void)core::conv2d(x, w, Tensor(), g);  // a known shape: no search
    CHECK(cpu::blas_threads() == 2);
    cpu::clear_conv_engine_choices();
  }
  cpu::set_blas_threads(before);
}

TEST_CASE("The convolution engine setting names its engines and refuses what the build lacks",
          "[core][conv][engines]") {
  CHECK(cpu::conv_engine_name(cpu::ConvEngine::Auto) == "auto");
  CHECK(cpu::conv_engine_name(cpu::ConvEngine::Im2col) == "im2col");
  CHECK(cpu::conv_engine_name(cpu::ConvEngine::OneDnn) == "onednn");
  const cpu::ConvEngine before = cpu::conv_engine();
  CHECK_THROWS_MATCHES(cpu::set_conv_engine(static_cast<cpu::ConvEngine>(7)), InvalidArgument,
                       MessageIs("cpu::set_conv_engine: engine 7, expected ConvEngine::Auto, Im2col or OneDnn"));
  CHECK(cpu::conv_engine() == before);
  CHECK_THROWS_MATCHES(cpu::set_onednn_threads(0), InvalidArgument,
                       MessageIs("cpu::set_onednn_threads: 0 threads, expected at least 1"));
  if (cpu::has_onednn()) {
    const PinnedEngine pinned(cpu::ConvEngine::OneDnn);
    CHECK(cpu::conv_engine() == cpu::ConvEngine::OneDnn);
    CHECK(cpu::onednn_threads() >= 1);
  } else {
    CHECK_THROWS_MATCHES(cpu::set_conv_engine(cpu::ConvEngine::OneDnn), Unsupported,
                         MessageIs("cpu::set_conv_engine: this build has no oneDNN, expected ConvEngine::Auto or "
                                   "Im2col (build with libdnnl-dev installed)"));
    CHECK(cpu::conv_engine() == before);
    CHECK(cpu::onednn_threads() == 0);
    CHECK_FALSE(cpu::set_onednn_threads(2));
  }
}

TEST_CASE("oneDNN's threads are set per calling thread", "[core][conv][engines][threads]") {
  if (!cpu::has_onednn()) SYNCBN_SKIP("this build has no oneDNN");
  const int mine = cpu::onednn_threads();
  int other_before = 0, other_after = 0;
  std::thread other([&] {
    other_before = cpu::onednn_threads();
    cpu::set_onednn_threads(mine + 1);
    other_after = cpu::onednn_threads();
  });
  other.join();
  CHECK(other_after == mine + 1);
  CHECK(other_before == mine);
  CHECK(cpu::onednn_threads() == mine);  // the other thread's setting stays its own
}

TEST_CASE("Frozen weights are reordered once per layer, thread and stage and convolve as reordering at each call",
          "[core][conv][engines][frozen]") {
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("the CPU engines: nothing to test on " << test_device());
  if (!cpu::has_onednn()) SYNCBN_SKIP("this build has no oneDNN: FrozenConvWeights does nothing");
  const core::ChannelLayout layout = GENERATE(core::ChannelLayout::First, core::ChannelLayout::Last);
  CAPTURE(kSeed, core::channel_layout_name(layout));
  const PinnedEngine pinned(cpu::ConvEngine::OneDnn);
  const Tolerance tol = syncbn::testing::tolerance_for(DType::Float32);
  // Layers of one shape (one primitive per stage) with 16 channels, which
  // oneDNN's forward reads in a blocked order at every ISA; whether the
  // input gradient does depends on the ISA (not with SSE4.1 on NCHW).
  const core::Conv2dGeometry g{{1, 1}, {1, 1}, {1, 1}, 1, layout};
  const Shape x_shape = layout == core::ChannelLayout::First ? Shape{2, 16, 6, 6} : Shape{2, 6, 6, 16};
  const Tensor x = Tensor::randn(x_shape, kSeed);
  const Tensor w_a = Tensor::randn(Shape{16, 16, 3, 3}, kSeed + 1), w_b = Tensor::randn(Shape{16, 16, 3, 3}, kSeed + 2),
               w_c = Tensor::randn(Shape{16, 16, 3, 3}, kSeed + 3);
  const Tensor bias = Tensor::randn(Shape{16}, kSeed + 4);
  // Reordered at each call: the reference.
  const std::vector<double> y_a = core::conv2d(x, w_a, bias, g).to_vector<double>();
  const std::vector<double> y_b = core::conv2d(x, w_b, Tensor(), g).to_vector<double>();
  const std::vector<double> y_c = core::conv2d(x, w_c, bias, g).to_vector<double>();
  const std::vector<double> dx_a = core::conv2d_backward_input(x, w_a, x_shape, g).to_vector<double>();
  const std::vector<double> dx_b = core::conv2d_backward_input(x, w_b, x_shape, g).to_vector<double>();
  REQUIRE(cpu::kept_conv_weights() == 0);
  {
    const cpu::FrozenConvWeights frozen;
    std::size_t kept = 0;
    for (int round = 0; round < 2; ++round) {
      CAPTURE(round);
      check_close(core::conv2d(x, w_a, bias, g), y_a, tol, "layer a's forward");
      check_close(core::conv2d(x, w_b, Tensor(), g), y_b, tol, "layer b's forward");
      check_close(core::conv2d_backward_input(x, w_a, x_shape, g), dx_a, tol, "layer a's input gradient");
      check_close(core::conv2d_backward_input(x, w_b, x_shape, g), dx_b, tol, "layer b's input gradient");
      // Each forward (with and without bias: two primitives) keeps a copy,
      // the input gradients one each or none: made in the first round only.
      if (round == 0) kept = cpu::kept_conv_weights();
      CHECK((kept == 2 || kept == 4));
      CHECK(cpu::kept_conv_weights() == kept);
    }
    // Another thread (a replica's worker) keeps its own.
    std::size_t other_kept = 0;
    std::thread other([&] {
      (void)core::conv2d(x, w_a, Tensor(), g);
      other_kept = cpu::kept_conv_weights();
    });
    other.join();
    CHECK(other_kept == 1);
    {
      const cpu::FrozenConvWeights nested;  // no new epoch: nothing dropped when it ends
    }
    CHECK(cpu::kept_conv_weights() == kept);
    // The promise's other side: a weight written under the guard is
    // convolved with the values it had when it was first read.
    check_close(core::conv2d(x, w_c, bias, g), y_c, tol, "layer c's forward");
    REQUIRE(cpu::kept_conv_weights() == kept + 1);
    float* c = w_c.data<float>();
    for (std::int64_t i = 0; i < w_c.numel(); ++i) c[i] *= 2.0f;
    check_close(core::conv2d(x, w_c, bias, g), y_c, tol, "layer c's forward, its weight written under the guard");
  }
  // After the last guard: the weight's new values, the copies dropped.
  const Tensor y_after = core::conv2d(x, w_c, bias, g);
  CHECK(cpu::kept_conv_weights() == 0);
  const std::vector<double> b = bias.to_vector<double>();
  std::vector<double> want = y_c;  // conv(x, 2 w) + bias = 2 (y_c - bias) + bias
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double channel_bias = b[layout == core::ChannelLayout::First ? (i / 36) % 16 : i % 16];
    want[i] = 2.0 * (want[i] - channel_bias) + channel_bias;
  }
  check_close(y_after, want, tol, "layer c's forward after the guard, its weight doubled");
  check_close(core::conv2d(x, w_b, Tensor(), g), y_b, tol, "layer b's forward after the guard");
}
