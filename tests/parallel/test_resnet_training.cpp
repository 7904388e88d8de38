// End to end on real data: a small ResNet with SyncBatchNorm, trained under
// DataParallel on 2 devices with Fashion-MNIST images, learns. The unit tests
// show that every stage computes what it should; this one shows that the
// stages together train a network (a sign error in a gradient, a stale
// parameter alias or a wrong statistic would stall it).

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "syncbn/data/batch_iterator.hpp"
#include "syncbn/data/fashion_mnist.hpp"
#include "syncbn/nn/loss.hpp"
#include "syncbn/nn/resnet.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/optim/lr_schedule.hpp"
#include "syncbn/optim/param_groups.hpp"
#include "syncbn/optim/sgd.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;

namespace {

constexpr std::int64_t kSteps = 400;
constexpr std::int64_t kBatch = 32;   // global: 16 per device
constexpr std::int64_t kWindow = 20;  // steps averaged at the start and at the end

std::string fashion_mnist_missing() {
  const std::string dir = data::default_fashion_mnist_dir();
  if (std::filesystem::is_directory(dir)) return "";
  return "no Fashion-MNIST in " + dir +
         " (install Debian's dataset-fashion-mnist: scripts/install_deps.sh, or set SYNCBN_FASHION_MNIST_DIR)";
}

double mean(const std::vector<double>& v, std::size_t begin, std::size_t end) {
  return std::accumulate(v.begin() + static_cast<std::ptrdiff_t>(begin), v.begin() + static_cast<std::ptrdiff_t>(end),
                         0.0) /
         static_cast<double>(end - begin);
}

double accuracy(parallel::DataParallel& dp, const data::Dataset& test) {
  dp.eval();
  data::BatchIterator batches(test, {.batch_size = 250, .shuffle = false, .device = test_device()});
  std::int64_t correct = 0;
  while (auto batch = batches.next()) {
    const auto scores = dp.forward(batch->images).to_vector<float>();
    const auto labels = batch->labels.to_vector<std::int64_t>();
    for (std::size_t i = 0; i < labels.size(); ++i) {
      const float* row = scores.data() + i * 10;
      correct += std::max_element(row, row + 10) - row == labels[i];
    }
  }
  dp.train();
  return static_cast<double>(correct) / static_cast<double>(test.labels.numel());
}

}  // namespace

TEST_CASE("A small ResNet with SyncBatchNorm on 2 devices learns Fashion-MNIST: the loss falls, the accuracy beats chance",
          "[parallel][training][long][threads]") {
  if (const std::string why = fashion_mnist_missing(); !why.empty()) SYNCBN_SKIP(why);
  const std::uint64_t seed = syncbn::testing::kSeed;
  CAPTURE(seed, kSteps, kBatch);

  // One pass over the first kSteps * kBatch training images.
  const data::Dataset train =
      data::load_fashion_mnist(data::Split::Train, data::default_fashion_mnist_dir(), kSteps * kBatch);
  const data::Dataset test = data::load_fashion_mnist(data::Split::Test, data::default_fashion_mnist_dir(), 1000);
  data::BatchIterator batches(train, {.batch_size = kBatch, .seed = seed, .drop_last = true, .device = test_device()});

  nn::ResNetOptions options;
  options.widths = {8, 16};
  options.blocks_per_stage = 1;
  options.seed = seed;
  options.device = test_device();
  auto model = nn::convert_sync_batchnorm(nn::resnet(options));
  parallel::DataParallel dp(model, test_devices(2), std::nullopt, {syncbn::testing::test_on_cuda()});
  optim::SGD sgd(optim::split_weight_decay(*model, 5e-4), optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
  optim::CosineAnnealingLR schedule(sgd, kSteps);
  nn::CrossEntropyLoss loss_fn;

  std::vector<double> losses;
  while (auto batch = batches.next()) {
    sgd.zero_grad();
    losses.push_back(loss_fn.forward(dp.forward(batch->images), batch->labels).item());
    dp.backward(loss_fn.backward());
    sgd.step();
    schedule.step();
  }
  REQUIRE(losses.size() == static_cast<std::size_t>(kSteps));
  const double first = mean(losses, 0, kWindow);
  const double last = mean(losses, losses.size() - kWindow, losses.size());
  const double test_accuracy = accuracy(dp, test);
  CAPTURE(first, last, test_accuracy);
  // Measured at this seed, at every CPU level: the mean loss falls from 2.08
  // to 0.79-0.80, and 71-73% of the 1000 test images are right (chance: 10%).
  // The bounds leave room for another BLAS or CPU, not for a network that
  // does not learn.
  CHECK(last < 0.6 * first);
  CHECK(test_accuracy > 0.5);
}
