#pragma once
// Mini-batches over a dataset in a shuffled order that depends on a seed and
// the epoch only.

#include <cstdint>
#include <optional>
#include <vector>

#include "syncbn/core/device.hpp"
#include "syncbn/core/tensor.hpp"
#include "syncbn/data/fashion_mnist.hpp"

namespace syncbn::data {

/// A permutation of 0 .. n-1 that depends on (seed, epoch) only: a
/// Fisher-Yates shuffle driven by splitmix64, so every platform and standard
/// library gives the same order. InvalidArgument for n < 0 or epoch < 0.
std::vector<std::int64_t> epoch_permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch);

/// Options of BatchIterator.
struct BatchOptions {
  /// Examples per batch (>= 1); the last batch of an epoch may be smaller.
  std::int64_t batch_size = 64;
  /// Seed of the shuffled order and of the flips.
  std::uint64_t seed = 0;
  /// Visit the examples in epoch_permutation(n, seed, epoch) order; when
  /// false, in dataset order.
  bool shuffle = true;
  /// Drop the last batch of an epoch when it is smaller than batch_size.
  bool drop_last = false;
  /// Augmentation: mirror each image along its last dimension (horizontal
  /// for (N, C, H, W) images) with probability 1/2, decided by (seed, epoch,
  /// example) so that a run is reproducible.
  bool random_flip = false;
  /// Where the batches go (copied from the host; logical CPU devices share
  /// the host batch).
  Device device = Device();
};

/// One mini-batch: the examples dataset.images[indices[i]] and
/// dataset.labels[indices[i]].
struct Batch {
  Tensor images;
  Tensor labels;
  std::vector<std::int64_t> indices;
};

/// Mini-batches of a dataset, epoch by epoch:
///
///   data::BatchIterator batches(train, {.batch_size = 128, .seed = 1});
///   for (std::int64_t epoch = 0; epoch < epochs; ++epoch) {
///     batches.start_epoch(epoch);
///     while (auto batch = batches.next()) step(batch->images, batch->labels);
///   }
///
/// Every example appears exactly once per epoch (with drop_last, at most
/// once). The dataset stays shared, not copied: its tensors must not change
/// while the iterator uses them. Thread safety: one thread at a time.
class BatchIterator {
 public:
  /// Starts at epoch 0. Throws InvalidArgument unless images and labels are
  /// defined CPU tensors with the same size of dimension 0 (images of rank
  /// >= 2 with random_flip), batch_size >= 1 and the device is available.
  BatchIterator(Dataset dataset, BatchOptions options);

  /// Starts epoch `epoch` (>= 0; any order, and again): its order and flips
  /// depend on (seed, epoch) only.
  void start_epoch(std::int64_t epoch);
  /// The next batch of the current epoch, or std::nullopt once the epoch is done.
  std::optional<Batch> next();

  std::int64_t epoch() const noexcept { return epoch_; }
  /// Batches per epoch (with drop_last, full batches only).
  std::int64_t batches_per_epoch() const noexcept;
  /// The examples in the order of the current epoch.
  const std::vector<std::int64_t>& order() const noexcept { return order_; }
  const Dataset& dataset() const noexcept { return dataset_; }
  const BatchOptions& options() const noexcept { return options_; }

 private:
  Dataset dataset_;
  BatchOptions options_;
  std::int64_t epoch_ = 0;
  std::vector<std::int64_t> order_;
  std::int64_t position_ = 0;
};

}  // namespace syncbn::data
