#pragma once
// Fashion-MNIST: 70000 grayscale 28 x 28 images of 10 kinds of clothing
// (60000 for training, 10000 for testing), as tensors.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "syncbn/core/tensor.hpp"

namespace syncbn::data {

/// Which part of a dataset.
enum class Split : std::uint8_t { Train, Test };

/// "train" or "test".
const char* split_name(Split split) noexcept;

/// Examples as tensors on the CPU.
struct Dataset {
  /// (N, 1, 28, 28) float32.
  Tensor images;
  /// (N) int64 class indices.
  Tensor labels;
};

/// The classes, by label.
inline constexpr std::array<std::string_view, 10> kFashionMnistClasses{
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

/// Mean and standard deviation of the training images' pixels scaled to
/// [0, 1] (0.28604 and 0.35302 over all 60000 x 784 pixels, rounded): the
/// normalisation load_fashion_mnist applies to both splits.
inline constexpr double kFashionMnistMean = 0.2860;
inline constexpr double kFashionMnistStd = 0.3530;

/// $SYNCBN_FASHION_MNIST_DIR when set and not empty, otherwise
/// /usr/share/datasets/fashion-mnist (where Debian's dataset-fashion-mnist
/// package puts the files).
std::string default_fashion_mnist_dir();

/// Reads a split of Fashion-MNIST from `dir`, which holds the original
/// files, gzip-compressed (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
/// t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) or plain (the same
/// names without .gz). Images become float32 pixels / 255 in [0, 1], then,
/// with `normalize`, (pixel - kFashionMnistMean) / kFashionMnistStd; labels
/// int64 in 0..9. `limit` >= 0 keeps the first `limit` examples (all of them
/// when the split has fewer); -1 keeps all.
///
/// Throws InvalidArgument naming the file for a file that is missing (with
/// how to install the dataset), not an IDX file of the expected shape
/// (N x 28 x 28 images, N labels of the same N) or a label above 9, and for a
/// limit below -1. Errors start with "load_fashion_mnist". Blocks while it
/// reads (about 30 MB compressed for the training split).
Dataset load_fashion_mnist(Split split, const std::string& dir = default_fashion_mnist_dir(), std::int64_t limit = -1,
                           bool normalize = true);

}  // namespace syncbn::data
