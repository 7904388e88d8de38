// SyncBatchNorm's error cases: bad shards, one value per channel, a replica
// that skips the layer, eval without communication, and the unreplicated
// layer that behaves exactly as BatchNorm. Device-generic.

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <thread>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "support/threads.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::check_equal;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;
using namespace std::chrono_literals;

namespace {

nn::BatchNormOptions on_device() { return nn::BatchNormOptions{.device = test_device()}; }

}  // namespace

TEST_CASE("A replica with a bad shard fails the step for everyone and leaves the state unchanged", "[nn][threads]") {
  auto layer = std::make_shared<nn::SyncBatchNorm2d>(4, on_device());
  auto replicas = parallel::replicate(*layer, test_devices(3));
  const std::vector<Tensor> inputs{Tensor::randn(Shape{3, 4, 2, 2}, 1, DType::Float32, test_device(0)),
                                   Tensor::randn(Shape{3, 3, 2, 2}, 2, DType::Float32, test_device(1)),
                                   Tensor::randn(Shape{3, 4, 2, 2}, 3, DType::Float32, test_device(2))};
  CHECK_THROWS_MATCHES(parallel::parallel_apply(replicas, inputs), InvalidArgument,
                       MessageIs("parallel_apply: replica 1 on " + test_device(1).str() +
                                 " failed in forward: SyncBatchNorm2d: input has 3 channels, expected 4"));
  CHECK(layer->num_batches_tracked().item() == 0);
  CHECK(layer->running_mean().to_vector<float>() == std::vector<float>(4, 0.0f));
  // The rendezvous was reset: a correct step works.
  std::vector<Tensor> good;
  for (int k = 0; k < 3; ++k) good.push_back(Tensor::randn(Shape{3, 4, 2, 2}, 4 + static_cast<std::uint64_t>(k), DType::Float32, test_device(k)));
  CHECK_NOTHROW(parallel::parallel_apply(replicas, good));
  CHECK(layer->num_batches_tracked().item() == 1);
}

TEST_CASE("One value per channel over the whole batch is rejected after the exchange", "[nn][threads]") {
  auto layer = std::make_shared<nn::SyncBatchNorm1d>(3, on_device());
  auto replicas = parallel::replicate(*layer, test_devices(3));
  // Shards of 0, 1 and 0 rows: every replica's own check would pass or be
  // vacuous; the total count of 1 is what is wrong.
  const Tensor x = Tensor::randn(Shape{1, 3}, syncbn::testing::kSeed, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(
      parallel::parallel_apply(replicas, parallel::scatter(x, test_devices(3), {0, 1, 0})), InvalidArgument,
      MessageIs("parallel_apply: replica 0 on " + test_device(0).str() +
                " failed in forward: SyncBatchNorm1d: expected more than 1 value per channel when training, got 1 "
                "(input of 3 channels with one value each over the whole batch)"));
  CHECK(layer->num_batches_tracked().item() == 0);
  CHECK(layer->running_var().to_vector<float>() == std::vector<float>(3, 1.0f));
  // One value on each of two replicas is a batch of two: fine.
  const Tensor two = Tensor::randn(Shape{2, 3}, syncbn::testing::kSeed, DType::Float32, test_device());
  CHECK_NOTHROW(parallel::parallel_apply(replicas, parallel::scatter(two, test_devices(3), {1, 0, 1})));
}

TEST_CASE("A layer that one replica skips times out naming the layer and the missing replica", "[nn][threads]") {
  auto model = std::make_shared<nn::Sequential>();
  model->add("bn", std::make_shared<nn::SyncBatchNorm2d>(2, on_device(), 200ms));
  auto replicas = parallel::replicate(*model, test_devices(3));
  const Tensor x = Tensor::randn(Shape{4, 2, 2, 2}, syncbn::testing::kSeed, DType::Float32, test_device());
  const auto results = syncbn::testing::run_in_threads(2, [&](int k) -> std::string {
    replicas[static_cast<std::size_t>(k)].forward(x.relabel(test_device(k)));  // replica 2 never calls the layer
    return "returned";
  });
  for (const auto& r : results) {
    CHECK_THAT(r, Catch::Matchers::Contains("SyncBatchNorm2d 'bn' forward: round 1 timed out after 200 ms"));
    CHECK_THAT(r, Catch::Matchers::Contains("still waiting for replica(s) [2]; where the replicas are: replica 0 waits "
                                            "in 'SyncBatchNorm2d 'bn' forward' round 1, replica 1 waits in "
                                            "'SyncBatchNorm2d 'bn' forward' round 1, replica 2 is in no rendezvous"));
  }
}

TEST_CASE("Eval mode uses running statistics and never communicates", "[nn][threads]") {
  const bool track = GENERATE(true, false);
  CAPTURE(track);
  nn::BatchNormOptions o = on_device();
  o.track_running_stats = track;
  auto layer = std::make_shared<nn::SyncBatchNorm2d>(3, o, 100ms);
  layer->eval();
  auto replicas = parallel::replicate(*layer, test_devices(4));
  // Only replica 1 runs: with any exchange it would wait for the others.
  const Tensor x = Tensor::randn(Shape{5, 3, 2, 2}, syncbn::testing::kSeed, DType::Float32, test_device(1), 1.0, 2.0);
  const auto start = std::chrono::steady_clock::now();
  const Tensor y = replicas[1].forward(x);
  CHECK(std::chrono::steady_clock::now() - start < 100ms);  // no timeout was needed to return
  nn::BatchNorm2d plain(3, o);
  plain.eval();
  check_equal(y.to_vector<float>(), plain.forward(x.relabel(test_device()).clone()).to_vector<float>(),
              "eval output equals BatchNorm2d's");
}

TEST_CASE("An unreplicated or once-replicated SyncBatchNorm is exactly BatchNorm", "[nn][threads]") {
  const bool replicated_once = GENERATE(false, true);
  CAPTURE(replicated_once);
  auto sync = std::make_shared<nn::SyncBatchNorm2d>(3, on_device());
  nn::BatchNorm2d plain(3, on_device());
  nn::Module* runner = sync.get();
  parallel::Replication once;
  if (replicated_once) {
    once = parallel::replicate(*sync, {test_device()});
    runner = &once[0];
  }
  for (int step = 0; step < 2; ++step) {
    const Tensor x = Tensor::randn(Shape{6, 3, 2, 2}, syncbn::testing::kSeed + static_cast<std::uint64_t>(step),
                                   DType::Float32, test_device(), 1.0, 2.0);
    const Tensor dy = Tensor::randn(Shape{6, 3, 2, 2}, syncbn::testing::kSeed + 9, DType::Float32, test_device());
    check_equal(runner->forward(x).to_vector<float>(), plain.forward(x).to_vector<float>(), "output");
    check_equal(runner->backward(dy).to_vector<float>(), plain.backward(dy).to_vector<float>(), "grad_input");
  }
  check_equal(sync->running_mean().to_vector<float>(), plain.running_mean().to_vector<float>(), "running_mean");
  check_equal(sync->running_var().to_vector<float>(), plain.running_var().to_vector<float>(), "running_var");
  CHECK(sync->num_batches_tracked().item() == 2);
}

TEST_CASE("SyncBatchNorm rejects a negative sync timeout", "[nn]") {
  CHECK_THROWS_MATCHES(nn::SyncBatchNorm1d(3, {}, -1ms), InvalidArgument,
                       MessageIs("SyncBatchNorm1d: sync_timeout is -1 ms, expected >= 0 (0 waits forever)"));
}

TEST_CASE("A bad shard names the synchronized layer by its path in the model", "[nn][threads]") {
  auto block = std::make_shared<nn::Sequential>();
  block->add("bn", std::make_shared<nn::SyncBatchNorm2d>(4, on_device()));
  nn::Sequential model;
  model.add("block", block);
  auto replicas = parallel::replicate(model, test_devices(2));
  const std::vector<Tensor> inputs{Tensor::randn(Shape{3, 4, 2, 2}, 1, DType::Float32, test_device(0)),
                                   Tensor::randn(Shape{3, 3, 2, 2}, 2, DType::Float32, test_device(1))};
  CHECK_THROWS_MATCHES(parallel::parallel_apply(replicas, inputs), InvalidArgument,
                       MessageIs("parallel_apply: replica 1 on " + test_device(1).str() +
                                 " failed in forward: SyncBatchNorm2d 'block.bn': input has 3 channels, expected 4"));
}

namespace {

// Runs `a` then `b`, except that replica `skipper` skips `a` and replica
// `sleeper` sleeps before `a`: a replica that skips a synchronized layer
// while another reaches it late.
class SkipAndSleep : public nn::Cloneable<SkipAndSleep> {
 public:
  SkipAndSleep(int skipper, int sleeper, std::chrono::milliseconds delay, std::chrono::milliseconds timeout)
      : skipper_(skipper), sleeper_(sleeper), delay_(delay) {
    register_module("a", std::make_shared<nn::SyncBatchNorm1d>(4, nn::BatchNormOptions{.device = test_device()}, timeout));
    register_module("b", std::make_shared<nn::SyncBatchNorm1d>(4, nn::BatchNormOptions{.device = test_device()}, timeout));
  }
  std::string describe() const override { return "SkipAndSleep"; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override { copy_id_ = copy_id; }
  Tensor forward(const Tensor& x) override {
    if (copy_id_ == sleeper_) std::this_thread::sleep_for(delay_);
    const Tensor h = copy_id_ == skipper_ ? x : child(0).forward(x);
    return child(1).forward(h);
  }
  Tensor backward(const Tensor& g) override { return g; }

 private:
  int skipper_, sleeper_;
  std::chrono::milliseconds delay_;
  int copy_id_ = -1;
};

}  // namespace

TEST_CASE("A replica that skips a layer is reported by the timeout it causes, not by the aborts that follow",
          "[nn][threads]") {
  // Replica 1 skips 'a' and waits in 'b'; replica 0 reaches 'a' late and
  // waits there for replica 1. The first timeout fires in 'b'; releasing the
  // others then fails replica 0's round in 'a' as aborted by replica 1.
  auto model = std::make_shared<SkipAndSleep>(1, 0, 60ms, 150ms);
  parallel::DataParallel dp(model, test_devices(2), std::nullopt,
                            parallel::DataParallelOptions{syncbn::testing::test_on_cuda()});
  const Tensor x = Tensor::randn(Shape{6, 4}, syncbn::testing::kSeed, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(dp.forward(x), Timeout,
                       MessageContains("SyncBatchNorm1d 'b' forward: round 1 timed out after 150 ms on replica 1, "
                                       "still waiting for replica(s) [0]; where the replicas are: replica 0 waits in "
                                       "'SyncBatchNorm1d 'a' forward' round 1, replica 1 waits in 'SyncBatchNorm1d 'b' "
                                       "forward' round 1"));
  CHECK(model->named_buffers().back().second->item() == 0.0);
}

TEST_CASE("One value per channel in an eval shard without running statistics names the shard", "[nn][threads]") {
  nn::BatchNormOptions options = on_device();
  options.track_running_stats = false;
  auto layer = std::make_shared<nn::SyncBatchNorm1d>(3, options);
  layer->eval();
  auto replicas = parallel::replicate(*layer, test_devices(2));
  // Eval does not synchronize: each shard is normalised by its own
  // statistics, and replica 1's single row is what is wrong.
  const Tensor x = Tensor::randn(Shape{4, 3}, syncbn::testing::kSeed, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(
      parallel::parallel_apply(replicas, parallel::scatter(x, test_devices(2), {3, 1})), InvalidArgument,
      MessageIs("parallel_apply: replica 1 on " + test_device(1).str() +
                " failed in forward: SyncBatchNorm1d: expected more than 1 value per channel for batch statistics "
                "(track_running_stats is off), got 1 (input of 3 channels with one value each over replica 1's "
                "shard (its own statistics))"));
}
