// A DataParallel training step is all or nothing: when its forward or its
// backward fails, every parameter, gradient and buffer of the user's module
// is as before the step, so that the caller can retry it (docs/design.md,
// "Step guarantees").

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <random>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/module_state.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "support/test_layers.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::kSeed;
using syncbn::testing::module_state;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;
using syncbn::testing::ThrowAt;

namespace {

parallel::DataParallelOptions dp_options() { return {syncbn::testing::test_on_cuda()}; }

// Sleeps on one replica before passing its input on: a late replica. The
// delay is shared by every copy, so the test can change it between steps.
class SleepOn : public nn::Cloneable<SleepOn> {
 public:
  explicit SleepOn(int replica) : replica_(replica), delay_us_(std::make_shared<std::atomic<int>>(0)) {}
  std::string describe() const override { return "SleepOn"; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override { copy_id_ = copy_id; }
  Tensor forward(const Tensor& x) override {
    if (copy_id_ == replica_) std::this_thread::sleep_for(std::chrono::microseconds(delay_us_->load()));
    return x;
  }
  Tensor backward(const Tensor& g) override { return g; }
  void set_delay(std::chrono::microseconds delay) { delay_us_->store(static_cast<int>(delay.count())); }

 private:
  int replica_;
  std::shared_ptr<std::atomic<int>> delay_us_;
  int copy_id_ = -1;
};

// Linear(4, 4) -> SyncBatchNorm1d(4) -> `tail` -> Linear(4, 2).
std::shared_ptr<nn::Sequential> model_with(std::shared_ptr<nn::Module> tail) {
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(4, 4, nn::LinearOptions{true, 1, DType::Float32, test_device()}));
  model->add(std::make_shared<nn::SyncBatchNorm1d>(4, nn::BatchNormOptions{.device = test_device()}));
  model->add(std::move(tail));
  model->add(std::make_shared<nn::Linear>(4, 2, nn::LinearOptions{true, 2, DType::Float32, test_device()}));
  return model;
}

Tensor batch(std::int64_t n, std::uint64_t seed) { return Tensor::randn(Shape{n, 4}, seed, DType::Float32, test_device()); }

// One good training step (forward, backward), so that gradients and running
// statistics are not at their initial values.
void good_step(parallel::DataParallel& dp, std::uint64_t seed) {
  const Tensor y = dp.forward(batch(6, seed));
  dp.backward(Tensor::randn(y.shape(), seed + 1, DType::Float32, test_device()));
}

}  // namespace

TEST_CASE("A forward that fails after a synchronized batch norm leaves the module as before the step",
          "[replicate][threads]") {
  const int k = GENERATE(1, 2, 3);
  CAPTURE(k, kSeed);
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::SyncBatchNorm1d>(4, nn::BatchNormOptions{.device = test_device()}));
  model->add(std::make_shared<nn::Linear>(4, 2, nn::LinearOptions{true, 1, DType::Float32, test_device()}));
  parallel::DataParallel dp(model, test_devices(k), std::nullopt, dp_options());
  const Tensor good = Tensor::randn(Shape{6, 4}, kSeed, DType::Float32, test_device());
  dp.backward(Tensor::ones(dp.forward(good).shape(), DType::Float32, test_device()));
  const auto before = module_state(*model);
  // (8, 4, 2) passes the batch norm (N, C, L) and fails in the Linear layer.
  const Tensor bad = Tensor::randn(Shape{8, 4, 2}, kSeed + 1, DType::Float32, test_device());
  CHECK_THROWS_AS(dp.forward(bad), InvalidArgument);
  CHECK(module_state(*model) == before);
  // The step can be retried: the next good step works and counts one batch more.
  dp.backward(Tensor::ones(dp.forward(good).shape(), DType::Float32, test_device()));
  CHECK(model->named_buffers().back().second->item() == 2.0);
}

TEST_CASE("A backward that fails leaves gradients and buffers as before the step's forward", "[replicate][threads]") {
  const int k = GENERATE(1, 2, 3);
  const int failing = GENERATE(0, 1);
  CAPTURE(k, failing, kSeed);
  if (failing >= k) return;
  // ThrowAt fails in its second backward (the first step is good); on one
  // device the module runs unreplicated (copy id -1).
  auto model = model_with(std::make_shared<ThrowAt>(k == 1 ? -1 : failing, 2, /*in_backward=*/true));
  parallel::DataParallel dp(model, test_devices(k), std::nullopt, dp_options());
  good_step(dp, kSeed);
  const auto before = module_state(*model);
  const Tensor y = dp.forward(batch(6, kSeed + 10));
  CHECK(module_state(*model) != before);  // the forward counted a batch
  CHECK_THROWS(dp.backward(Tensor::randn(y.shape(), kSeed + 11, DType::Float32, test_device())));
  CHECK(module_state(*model) == before);
  good_step(dp, kSeed + 20);
}

TEST_CASE("A backward refused for its grad_output leaves the module as before the step's forward",
          "[replicate][threads]") {
  const int k = GENERATE(1, 2, 3);
  const bool undefined = GENERATE(false, true);
  CAPTURE(k, undefined, kSeed);
  auto model = model_with(std::make_shared<nn::Identity>());
  parallel::DataParallel dp(model, test_devices(k), std::nullopt, dp_options());
  good_step(dp, kSeed);
  const auto before = module_state(*model);
  dp.forward(batch(6, kSeed + 30));
  CHECK(module_state(*model) != before);  // the forward counted a batch
  const Tensor wrong = undefined ? Tensor() : Tensor::ones(Shape{6, 3}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(dp.backward(wrong), InvalidArgument,
                       syncbn::testing::MessageContains(undefined ? "DataParallel::backward: grad_output is undefined"
                                                                  : "DataParallel::backward: grad_output has shape"));
  CHECK(module_state(*model) == before);
  CHECK_THROWS_MATCHES(dp.backward(Tensor::ones(Shape{6, 2}, DType::Float32, test_device())), InvalidArgument,
                       syncbn::testing::MessageContains("no forward to differentiate"));
  good_step(dp, kSeed + 40);
}

TEST_CASE("A failed step drops the statistics its forward kept for a deferred update", "[replicate][threads]") {
  const int k = GENERATE(1, 2);
  CAPTURE(k, kSeed);
  nn::BatchNormOptions options{.device = test_device()};
  options.ema_update = nn::EmaUpdate::Deferred;
  auto bn = std::make_shared<nn::SyncBatchNorm1d>(4, options);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      bn, std::make_shared<ThrowAt>(k == 1 ? -1 : 0, 2, /*in_backward=*/true), std::make_shared<nn::Identity>()});
  parallel::DataParallel dp(model, test_devices(k), std::nullopt, dp_options());
  const Tensor y = dp.forward(batch(6, kSeed + 50));
  dp.backward(Tensor::ones(y.shape(), DType::Float32, test_device()));
  REQUIRE(bn->pending_running_updates() == 1);
  dp.forward(batch(6, kSeed + 51));
  CHECK(bn->pending_running_updates() == 2);
  CHECK_THROWS(dp.backward(Tensor::ones(y.shape(), DType::Float32, test_device())));  // ThrowAt's second backward
  CHECK(bn->pending_running_updates() == 1);
}

TEST_CASE("Steps that fail because a replica arrives late change no running statistics", "[replicate][threads]") {
  // Replica 0 sleeps about as long as the layer's timeout before the
  // synchronized batch norm: some steps fail with a Timeout, some succeed;
  // only the successful ones may count a batch.
  const int k = 3;
  const auto timeout = 20ms;
  auto sleeper = std::make_shared<SleepOn>(0);
  auto model = std::make_shared<nn::Sequential>();
  model->add(sleeper);
  model->add(std::make_shared<nn::SyncBatchNorm1d>(4, nn::BatchNormOptions{.device = test_device()}, timeout));
  parallel::DataParallel dp(model, test_devices(k), std::nullopt, dp_options());
  const Tensor& tracked = *model->named_buffers().back().second;  // num_batches_tracked
  std::mt19937 rng(kSeed);
  std::uniform_int_distribution<int> delay_us(14000, 26000);
  int succeeded = 0, failed = 0;
  for (int step = 0; step < 40; ++step) {
    sleeper->set_delay(std::chrono::microseconds(delay_us(rng)));
    try {
      dp.forward(batch(6, kSeed + static_cast<std::uint64_t>(step)));
      ++succeeded;
    } catch (const CommError&) {
      ++failed;
    }
    CHECK(tracked.item() == static_cast<double>(succeeded));
  }
  CAPTURE(succeeded, failed);
}

TEST_CASE("parallel_backward after a failed parallel_apply is rejected at once", "[replicate][threads]") {
  CAPTURE(kSeed);
  // Replica 1 fails after the synchronized batch norm ran on every replica.
  auto model = model_with(std::make_shared<ThrowAt>(1, 2));
  auto replicas = parallel::replicate(*model, test_devices(2));
  const std::vector<Tensor> xs{batch(3, kSeed), batch(3, kSeed + 1).to(test_device(1))};
  const auto ys = parallel::parallel_apply(replicas, xs);
  CHECK(replicas.has_forward());
  std::vector<Tensor> dys;
  for (const Tensor& y : ys) dys.push_back(Tensor::ones(y.shape(), DType::Float32, y.device()));
  parallel::parallel_backward(replicas, dys);
  CHECK_THROWS(parallel::parallel_apply(replicas, xs));
  CHECK_FALSE(replicas.has_forward());
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_MATCHES(parallel::parallel_backward(replicas, dys), InvalidArgument,
                       syncbn::testing::MessageIs(
                           "parallel_backward: the replicas have no forward to differentiate (the latest parallel_apply "
                           "failed, or none ran), expected a successful parallel_apply first"));
  // Refused before any replica ran (the layers' default timeout is 5 minutes).
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(60));
  // A successful parallel_apply makes the replicas usable again.
  const auto again = parallel::parallel_apply(replicas, xs);
  CHECK(parallel::parallel_backward(replicas, dys).size() == 2);
}
