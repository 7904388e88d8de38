// BatchIterator and epoch_permutation: every example once per epoch, orders
// fixed by (seed, epoch), uniform shuffles, flips, devices and bad options.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <vector>

#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/data/batch_iterator.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using data::BatchIterator;
using data::BatchOptions;
using data::epoch_permutation;
using syncbn::testing::MessageIs;

namespace {

constexpr std::int64_t kHeight = 2, kWidth = 3;

// n examples: image i's element k is i * 100 + k; label i is i.
data::Dataset numbered(std::int64_t n) {
  std::vector<float> pixels(static_cast<std::size_t>(n * kHeight * kWidth));
  for (std::size_t k = 0; k < pixels.size(); ++k)
    pixels[k] = static_cast<float>((k / (kHeight * kWidth)) * 100 + k % (kHeight * kWidth));
  std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
  std::iota(labels.begin(), labels.end(), 0);
  return {Tensor::from_vector(pixels, Shape{n, 1, kHeight, kWidth}), Tensor::from_vector(labels, Shape{n})};
}

std::vector<float> image_of(const data::Dataset& d, std::int64_t i) {
  return d.images.rows(i, i + 1).to_vector<float>();
}

std::vector<float> mirrored(std::vector<float> image) {
  for (std::size_t row = 0; row < image.size(); row += kWidth)
    std::reverse(image.begin() + static_cast<std::ptrdiff_t>(row), image.begin() + static_cast<std::ptrdiff_t>(row + kWidth));
  return image;
}

// The indices of every batch of an epoch, in order.
std::vector<std::vector<std::int64_t>> epoch_batches(BatchIterator& it, std::int64_t epoch) {
  it.start_epoch(epoch);
  std::vector<std::vector<std::int64_t>> out;
  while (auto batch = it.next()) out.push_back(batch->indices);
  return out;
}

}  // namespace

TEST_CASE("Every example appears exactly once per epoch, with its own image and label", "[data][batches]") {
  const bool drop_last = GENERATE(false, true);
  const std::int64_t n = GENERATE(0, 1, 10, 103);
  CAPTURE(drop_last, n, syncbn::testing::kSeed);
  const data::Dataset d = numbered(n);
  BatchIterator it(d, BatchOptions{.batch_size = 10, .seed = syncbn::testing::kSeed, .drop_last = drop_last});
  const std::int64_t full = n / 10, rest = n % 10;
  CHECK(it.batches_per_epoch() == (drop_last || rest == 0 ? full : full + 1));
  for (std::int64_t epoch = 0; epoch < 3; ++epoch) {
    CAPTURE(epoch);
    it.start_epoch(epoch);
    std::vector<std::int64_t> seen;
    std::int64_t batches = 0;
    while (auto batch = it.next()) {
      ++batches;
      const auto size = static_cast<std::int64_t>(batch->indices.size());
      CHECK((size == 10 || (!drop_last && size == rest && batches == full + 1)));
      CHECK(batch->images.shape() == Shape{size, 1, kHeight, kWidth});
      CHECK(batch->labels.to_vector<std::int64_t>() == batch->indices);
      for (std::int64_t i = 0; i < size; ++i)
        CHECK(batch->images.rows(i, i + 1).to_vector<float>() == image_of(d, batch->indices[static_cast<std::size_t>(i)]));
      seen.insert(seen.end(), batch->indices.begin(), batch->indices.end());
    }
    CHECK(batches == it.batches_per_epoch());
    CHECK_FALSE(it.next().has_value());  // stays done
    std::vector<std::int64_t> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // no example twice
    CHECK(static_cast<std::int64_t>(seen.size()) == (drop_last ? full * 10 : n));
    if (!drop_last) {
      std::vector<std::int64_t> all(static_cast<std::size_t>(n));
      std::iota(all.begin(), all.end(), 0);
      CHECK(sorted == all);
    }
  }
}

TEST_CASE("The order depends on the seed and the epoch only, and differs between epochs", "[data][batches]") {
  const data::Dataset d = numbered(50);
  const BatchOptions options{.batch_size = 8, .seed = 7};
  BatchIterator a(d, options), b(d, options);
  const auto a0 = epoch_batches(a, 0), a1 = epoch_batches(a, 1);
  CHECK(epoch_batches(b, 1) == a1);  // any order of epochs
  CHECK(epoch_batches(b, 0) == a0);
  CHECK(epoch_batches(a, 0) == a0);  // an epoch again
  CHECK(a0 != a1);
  BatchIterator other_seed(d, BatchOptions{.batch_size = 8, .seed = 8});
  CHECK(epoch_batches(other_seed, 0) != a0);
  // Without shuffle: dataset order.
  BatchIterator in_order(d, BatchOptions{.batch_size = 8, .shuffle = false});
  std::vector<std::int64_t> order = in_order.order();
  std::vector<std::int64_t> all(50);
  std::iota(all.begin(), all.end(), 0);
  CHECK(order == all);
  CHECK(epoch_batches(in_order, 3).front() == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("epoch_permutation gives the same order on every platform", "[data][batches]") {
  // Pinned values: the shuffle is syncbn's own (splitmix64 and Fisher-Yates),
  // not std::shuffle, whose order differs between standard libraries.
  CHECK(epoch_permutation(10, 42, 0) == std::vector<std::int64_t>{7, 5, 0, 1, 4, 3, 6, 8, 2, 9});
  CHECK(epoch_permutation(10, 42, 1) == std::vector<std::int64_t>{4, 5, 1, 9, 3, 6, 8, 7, 0, 2});
  CHECK(epoch_permutation(0, 42, 0).empty());
  CHECK(epoch_permutation(1, 42, 0) == std::vector<std::int64_t>{0});
}

TEST_CASE("epoch_permutation draws every order of three examples equally often", "[data][batches]") {
  std::map<std::vector<std::int64_t>, int> counts;
  constexpr int kEpochs = 6000;
  for (std::int64_t epoch = 0; epoch < kEpochs; ++epoch) ++counts[epoch_permutation(3, syncbn::testing::kSeed, epoch)];
  CAPTURE(syncbn::testing::kSeed);
  REQUIRE(counts.size() == 6);
  // Expected 1000 each; a binomial standard deviation is about 29.
  for (const auto& [order, count] : counts) {
    CAPTURE(order);
    CHECK(count > 880);
    CHECK(count < 1120);
  }
}

TEST_CASE("random_flip mirrors about half the images along their width, reproducibly", "[data][batches]") {
  const data::Dataset d = numbered(400);
  const BatchOptions options{.batch_size = 64, .seed = 3, .random_flip = true};
  BatchIterator it(d, options);
  const auto flips = [&](std::int64_t epoch) {
    it.start_epoch(epoch);
    std::vector<bool> flipped(400, false);
    int count = 0;
    while (auto batch = it.next()) {
      for (std::size_t i = 0; i < batch->indices.size(); ++i) {
        const auto index = batch->indices[i];
        const auto got = batch->images.rows(static_cast<std::int64_t>(i), static_cast<std::int64_t>(i) + 1).to_vector<float>();
        const bool is_flipped = got == mirrored(image_of(d, index));
        CHECK((is_flipped || got == image_of(d, index)));
        flipped[static_cast<std::size_t>(index)] = is_flipped;
        count += is_flipped ? 1 : 0;
      }
    }
    CHECK(count > 150);
    CHECK(count < 250);
    return flipped;
  };
  const auto epoch0 = flips(0);
  CHECK(flips(0) == epoch0);
  CHECK(flips(1) != epoch0);
  // The dataset itself is never flipped.
  CHECK(image_of(d, 5) == numbered(400).images.rows(5, 6).to_vector<float>());
}

TEST_CASE("Batches go to the requested device", "[data][batches]") {
  BatchIterator it(numbered(5), BatchOptions{.batch_size = 4, .device = Device::cpu(2)});
  const auto batch = it.next();
  REQUIRE(batch.has_value());
  CHECK(batch->images.device() == Device::cpu(2));
  CHECK(batch->labels.device() == Device::cpu(2));
}

TEST_CASE("BatchIterator refuses bad options and datasets with clear errors", "[data][batches]") {
  const data::Dataset d = numbered(4);
  CHECK_THROWS_MATCHES(BatchIterator(d, BatchOptions{.batch_size = 0}), InvalidArgument,
                       MessageIs("BatchIterator: batch_size is 0, expected >= 1"));
  CHECK_THROWS_MATCHES(BatchIterator(data::Dataset{d.images, d.labels.rows(0, 3)}, BatchOptions{}), InvalidArgument,
                       MessageIs("BatchIterator: images (4, 1, 2, 3) and labels (3), expected the same number of "
                                 "examples (dimension 0)"));
  CHECK_THROWS_MATCHES(BatchIterator(data::Dataset{d.images, Tensor()}, BatchOptions{}), InvalidArgument,
                       MessageIs("BatchIterator: the dataset's labels are undefined, expected tensors"));
  CHECK_THROWS_MATCHES(BatchIterator(data::Dataset{d.labels, d.labels}, BatchOptions{.random_flip = true}),
                       InvalidArgument, MessageIs("BatchIterator: random_flip needs images of rank >= 2, got (4)"));
  BatchIterator it(d, BatchOptions{});
  CHECK_THROWS_MATCHES(it.start_epoch(-1), InvalidArgument,
                       MessageIs("BatchIterator::start_epoch: epoch is -1, expected >= 0"));
  CHECK_THROWS_MATCHES(epoch_permutation(-1, 0, 0), InvalidArgument,
                       MessageIs("epoch_permutation: n is -1, expected >= 0"));
}
