// Synchronized batch norm through a convolutional network: a ResNet whose
// BatchNorm2d layers are converted to SyncBatchNorm2d, run by DataParallel
// over K replicas, equals the same network on one device on the whole batch
// (outputs, input gradients, every parameter gradient, running statistics),
// step after step of SGD. Device-generic (K logical replicas on cuda:0 in the
// CUDA binary).

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/convolutions.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/nn/loss.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/nn/resnet.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/optim/sgd.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::kSeed;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;

namespace {

std::shared_ptr<nn::Module> small_resnet(DType dtype, core::ChannelLayout layout = core::ChannelLayout::First) {
  nn::ResNetOptions options;
  options.layout = layout;
  options.widths = {4, 6};
  options.blocks_per_stage = 1;
  options.num_classes = 3;
  options.seed = kSeed;
  options.dtype = dtype;
  options.device = test_device();
  return nn::resnet(options);
}

}  // namespace

TEST_CASE("A SyncBatchNorm ResNet on K replicas equals the ResNet on one device on the whole batch",
          "[replicate][conv][threads]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const int k = GENERATE(2, 3, 4);
  const DType dtype = GENERATE(DType::Float64, DType::Float32);
  const std::int64_t batch = 10;  // uneven shards for K = 3 and 4
  CAPTURE(k, dtype, kSeed);
  // float64: the orders of the sums differ (per replica, then across
  // replicas), nothing else; float32 adds their rounding.
  const syncbn::testing::Tolerance tol = dtype == DType::Float64 ? syncbn::testing::Tolerance{1e-10, 1e-11}
                                                                 : syncbn::testing::Tolerance{2e-4, 2e-5};
  auto single = small_resnet(dtype);
  auto synced = nn::convert_sync_batchnorm(single->clone());
  parallel::DataParallel dp(synced, test_devices(k), std::nullopt,
                          parallel::DataParallelOptions{syncbn::testing::test_on_cuda()});
  optim::SGD sgd_single(single->parameters(), optim::SGDOptions{0.05, 0.9});
  optim::SGD sgd_multi(synced->parameters(), optim::SGDOptions{0.05, 0.9});
  nn::CrossEntropyLoss loss_single, loss_multi;
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    const Tensor x = Tensor::randn(Shape{batch, 1, 9, 9}, kSeed + 50 + static_cast<std::uint64_t>(step), dtype,
                                   test_device(), 0.3, 1.2);
    std::vector<std::int64_t> labels;
    for (std::int64_t i = 0; i < batch; ++i) labels.push_back((i * 5 + step) % 3);
    const Tensor t = Tensor::from_vector(labels, Shape{batch}, test_device());
    sgd_single.zero_grad();
    sgd_multi.zero_grad();
    const Tensor y_single = single->forward(x);
    const Tensor y_multi = dp.forward(x);
    check_close(y_multi, y_single.to_vector<double>(), tol, "output");
    check_close(loss_multi.forward(y_multi, t), loss_single.forward(y_single, t).to_vector<double>(), tol, "loss");
    single->backward(loss_single.backward());
    dp.backward(loss_multi.backward());
    auto got = synced->named_parameters();
    auto want = single->named_parameters();
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      REQUIRE(got[i].first == want[i].first);
      check_close(got[i].second->grad, want[i].second->grad.to_vector<double>(), tol, "gradient of " + got[i].first);
    }
    sgd_single.step();
    sgd_multi.step();
  }
  auto got = synced->named_buffers();
  auto want = single->named_buffers();
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    check_close(*got[i].second, want[i].second->to_vector<double>(), tol, "buffer " + got[i].first);
  // Eval mode on the trained weights and running statistics.
  single->eval();
  synced->eval();
  const Tensor x = Tensor::randn(Shape{batch, 1, 9, 9}, kSeed + 60, dtype, test_device());
  check_close(dp.forward(x), single->forward(x).to_vector<double>(), tol, "eval output");
}

TEST_CASE("A channels-last SyncBatchNorm ResNet on 2 replicas equals the NCHW ResNet on one device",
          "[replicate][conv][threads][channels-last]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const DType dtype = GENERATE(DType::Float64, DType::Float32);
  const std::int64_t batch = 9;  // uneven shards
  CAPTURE(dtype, kSeed);
  const syncbn::testing::Tolerance tol = dtype == DType::Float64 ? syncbn::testing::Tolerance{1e-10, 1e-11}
                                                                 : syncbn::testing::Tolerance{2e-4, 2e-5};
  auto single = small_resnet(dtype);
  auto synced = nn::convert_sync_batchnorm(small_resnet(dtype, core::ChannelLayout::Last));
  parallel::DataParallel dp(synced, test_devices(2), std::nullopt,
                            parallel::DataParallelOptions{syncbn::testing::test_on_cuda()});
  optim::SGD sgd_single(single->parameters(), optim::SGDOptions{0.05, 0.9});
  optim::SGD sgd_multi(synced->parameters(), optim::SGDOptions{0.05, 0.9});
  nn::CrossEntropyLoss loss_single, loss_multi;
  for (int step = 0; step < 2; ++step) {
    CAPTURE(step);
    const Tensor x = Tensor::randn(Shape{batch, 1, 9, 9}, kSeed + 90 + static_cast<std::uint64_t>(step), dtype,
                                   test_device(), 0.3, 1.2);
    std::vector<std::int64_t> labels;
    for (std::int64_t i = 0; i < batch; ++i) labels.push_back((i * 2 + step) % 3);
    const Tensor t = Tensor::from_vector(labels, Shape{batch}, test_device());
    sgd_single.zero_grad();
    sgd_multi.zero_grad();
    const Tensor y_single = single->forward(x);
    const Tensor y_multi = dp.forward(core::to_channels_last(x));  // scattered along N, as NCHW
    check_close(y_multi, y_single.to_vector<double>(), tol, "output");
    loss_single.forward(y_single, t);
    loss_multi.forward(y_multi, t);
    const Tensor dx_single = single->backward(loss_single.backward());
    const Tensor dx_multi = dp.backward(loss_multi.backward());
    check_close(core::to_channels_first(dx_multi), dx_single.to_vector<double>(), tol, "input gradient");
    const auto got = synced->named_parameters(), want = single->named_parameters();
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
      check_close(got[i].second->grad, want[i].second->grad.to_vector<double>(), tol, "gradient of " + got[i].first);
    sgd_single.step();
    sgd_multi.step();
  }
  const auto got = synced->named_buffers(), want = single->named_buffers();
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    check_close(*got[i].second, want[i].second->to_vector<double>(), tol, "buffer " + got[i].first);
}

TEST_CASE("DataParallel over several CPU devices gives each BLAS call its share of the cores",
          "[replicate][conv][threads]") {
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("the BLAS serves CPU devices only");
  if (cpu::blas_threads() == 0) SYNCBN_SKIP("this build's BLAS (if any) cannot be told its threads");
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("OMP_NUM_THREADS") != nullptr)
    SYNCBN_SKIP("OPENBLAS_NUM_THREADS or OMP_NUM_THREADS is set: DataParallel keeps the user's choice");
  const int before = cpu::blas_threads();
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int share = std::max(1, cores / 2);
  REQUIRE(cpu::set_blas_threads(share + 1));
  {
    parallel::DataParallel one(small_resnet(DType::Float32), {Device::cpu(0)});
    CHECK(cpu::blas_threads() == share + 1);  // one device keeps the BLAS's threads
  }
  {
    parallel::DataParallel two(small_resnet(DType::Float32), {Device::cpu(0), Device::cpu(1)});
    CHECK(cpu::blas_threads() == share);
  }
  cpu::set_blas_threads(before);
}

namespace {

// Records, on each replica's thread, the oneDNN threads that thread has.
class OneDnnThreadsProbe : public nn::Cloneable<OneDnnThreadsProbe> {
 public:
  explicit OneDnnThreadsProbe(std::shared_ptr<std::vector<int>> seen) : seen_(std::move(seen)) {}
  std::string describe() const override { return "OneDnnThreadsProbe"; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override { copy_id_ = copy_id; }
  Tensor forward(const Tensor& x) override {
    (*seen_)[static_cast<std::size_t>(copy_id_)] = cpu::onednn_threads();  // each replica its own entry
    return x;
  }
  Tensor backward(const Tensor& g) override { return g; }

 private:
  std::shared_ptr<std::vector<int>> seen_;
  int copy_id_ = 0;
};

}  // namespace

TEST_CASE("DataParallel over several CPU devices gives each replica's oneDNN calls its share of the cores",
          "[replicate][conv][threads]") {
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("oneDNN serves CPU devices only");
  if (!cpu::has_onednn()) SYNCBN_SKIP("this build has no oneDNN");
  if (std::getenv("OMP_NUM_THREADS") != nullptr)
    SYNCBN_SKIP("OMP_NUM_THREADS is set: DataParallel keeps the user's choice");
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int mine = cpu::onednn_threads();
  for (const int k : {2, 4}) {
    CAPTURE(k, cores);
    auto seen = std::make_shared<std::vector<int>>(static_cast<std::size_t>(k), 0);
    parallel::DataParallel dp(std::make_shared<OneDnnThreadsProbe>(seen), test_devices(k));
    (void)dp.forward(Tensor::zeros(Shape{static_cast<std::int64_t>(k), 3}));
    CHECK(*seen == std::vector<int>(static_cast<std::size_t>(k), std::max(1, cores / k)));
  }
  CHECK(cpu::onednn_threads() == mine);  // the caller's thread keeps its own
}
