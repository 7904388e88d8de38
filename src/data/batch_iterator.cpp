// BatchIterator: gathers the examples of each batch on the host.

#include "syncbn/data/batch_iterator.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

#include "syncbn/core/splitmix64.hpp"
#include "syncbn/error.hpp"

namespace syncbn::data {
namespace {

using core::splitmix64;

// Independent streams for the order and the flips of an epoch.
constexpr std::uint64_t kOrderStream = 1, kFlipStream = 2;

std::uint64_t stream_key(std::uint64_t seed, std::int64_t epoch, std::uint64_t stream) {
  return splitmix64(splitmix64(seed ^ splitmix64(stream)) ^ static_cast<std::uint64_t>(epoch));
}

// splitmix64 as a sequence, with unbiased draws below a bound (rejection, so
// every order is equally likely).
class Stream {
 public:
  explicit Stream(std::uint64_t key) : state_(key) {}
  std::uint64_t next() {
    state_ += core::kSplitmixIncrement;
    return splitmix64(state_);
  }
  std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    for (;;) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  std::uint64_t state_;
};

// Copies rows `indices` of `source` (a CPU tensor) into a new CPU tensor.
Tensor gather_rows(const Tensor& source, const std::vector<std::int64_t>& indices) {
  const auto n = static_cast<std::int64_t>(indices.size());
  Tensor out = Tensor::empty(source.shape().with_rows(n), source.dtype(), Device::cpu());
  const std::size_t row_bytes = source.size(0) == 0 ? 0 : source.nbytes() / static_cast<std::size_t>(source.size(0));
  const auto* from = static_cast<const std::uint8_t*>(source.raw_data());
  auto* to = static_cast<std::uint8_t*>(out.raw_data());
  for (std::size_t i = 0; i < indices.size(); ++i)
    std::memcpy(to + i * row_bytes, from + static_cast<std::size_t>(indices[i]) * row_bytes, row_bytes);
  return out;
}

// Mirrors example `row` of `images` along its last dimension.
void flip_row(const Tensor& images, std::int64_t row) {
  const std::size_t element = dtype_size(images.dtype());
  const std::size_t width = static_cast<std::size_t>(images.size(-1));
  const std::size_t row_elements = static_cast<std::size_t>(images.numel() / images.size(0));
  auto* base = static_cast<std::uint8_t*>(images.raw_data()) + static_cast<std::size_t>(row) * row_elements * element;
  for (std::size_t line = 0; line + width <= row_elements && width > 1; line += width) {
    std::uint8_t* p = base + line * element;
    for (std::size_t j = 0; j < width / 2; ++j)
      std::swap_ranges(p + j * element, p + (j + 1) * element, p + (width - 1 - j) * element);
  }
}

}  // namespace

std::vector<std::int64_t> epoch_permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  SYNCBN_CHECK(n >= 0, "epoch_permutation: n is ", n, ", expected >= 0");
  SYNCBN_CHECK(epoch >= 0, "epoch_permutation: epoch is ", epoch, ", expected >= 0");
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  Stream stream(stream_key(seed, epoch, kOrderStream));
  for (std::int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(stream.below(static_cast<std::uint64_t>(i) + 1));
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
  }
  return order;
}

BatchIterator::BatchIterator(Dataset dataset, BatchOptions options)
    : dataset_(std::move(dataset)), options_(options) {
  constexpr const char* op = "BatchIterator";
  const Tensor& images = dataset_.images;
  const Tensor& labels = dataset_.labels;
  SYNCBN_CHECK(images.defined() && labels.defined(), op, ": the dataset's ", images.defined() ? "labels" : "images",
               " are undefined, expected tensors");
  SYNCBN_CHECK(images.device().is_cpu() && labels.device().is_cpu(), op, ": the dataset's ",
               images.device().is_cpu() ? "labels are on " + labels.device().str()
                                         : "images are on " + images.device().str(),
               ", expected CPU tensors (batches are gathered on the host)");
  SYNCBN_CHECK(images.rank() >= 1 && labels.rank() >= 1 && images.size(0) == labels.size(0), op, ": images ",
               images.shape(), " and labels ", labels.shape(), ", expected the same number of examples (dimension 0)");
  SYNCBN_CHECK(!options.random_flip || images.rank() >= 2, op, ": random_flip needs images of rank >= 2, got ",
               images.shape());
  SYNCBN_CHECK(options.batch_size >= 1, op, ": batch_size is ", options.batch_size, ", expected >= 1");
  options.device.check_available();
  start_epoch(0);
}

void BatchIterator::start_epoch(std::int64_t epoch) {
  SYNCBN_CHECK(epoch >= 0, "BatchIterator::start_epoch: epoch is ", epoch, ", expected >= 0");
  const std::int64_t n = dataset_.images.size(0);
  if (options_.shuffle) {
    order_ = epoch_permutation(n, options_.seed, epoch);
  } else {
    order_.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) order_[static_cast<std::size_t>(i)] = i;
  }
  epoch_ = epoch;
  position_ = 0;
}

std::int64_t BatchIterator::batches_per_epoch() const noexcept {
  const std::int64_t n = dataset_.images.size(0);
  return options_.drop_last ? n / options_.batch_size : (n + options_.batch_size - 1) / options_.batch_size;
}

std::optional<Batch> BatchIterator::next() {
  const auto n = static_cast<std::int64_t>(order_.size());
  const std::int64_t size = std::min(options_.batch_size, n - position_);
  if (size <= 0 || (options_.drop_last && size < options_.batch_size)) return std::nullopt;
  Batch batch;
  batch.indices.assign(order_.begin() + position_, order_.begin() + position_ + size);
  position_ += size;
  batch.images = gather_rows(dataset_.images, batch.indices);
  batch.labels = gather_rows(dataset_.labels, batch.indices);
  if (options_.random_flip) {
    const std::uint64_t key = stream_key(options_.seed, epoch_, kFlipStream);
    for (std::int64_t i = 0; i < size; ++i)
      if (splitmix64(key ^ static_cast<std::uint64_t>(batch.indices[static_cast<std::size_t>(i)])) & 1U)
        flip_row(batch.images, i);
  }
  if (options_.device != Device::cpu()) {
    batch.images = batch.images.onto(options_.device);
    batch.labels = batch.labels.onto(options_.device);
  }
  return batch;
}

}  // namespace syncbn::data
