// load_fashion_mnist on small files written by the test (always) and on the
// real dataset (Debian's dataset-fashion-mnist; skipped where it is absent).

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "support/idx_files.hpp"
#include "support/matchers.hpp"
#include "support/skip.hpp"
#include "support/temp_dir.hpp"
#include "syncbn/data/fashion_mnist.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using data::load_fashion_mnist;
using data::Split;
using syncbn::testing::idx_bytes;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using syncbn::testing::TempDir;
using syncbn::testing::write_idx_file;

namespace {

constexpr std::uint32_t kPixels = 28 * 28;

// Image i's pixel p is (i * 31 + p) mod 256.
std::vector<std::uint8_t> fake_pixels(std::uint32_t n) {
  std::vector<std::uint8_t> out(static_cast<std::size_t>(n) * kPixels);
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = static_cast<std::uint8_t>((k / kPixels) * 31 + k % kPixels);
  return out;
}

// A split of n images with the given labels, under its original file names.
void write_fake_split(const TempDir& dir, const std::string& prefix, const std::vector<std::uint8_t>& labels,
                      bool gzip) {
  const auto n = static_cast<std::uint32_t>(labels.size());
  const std::string ext = gzip ? ".gz" : "";
  write_idx_file(dir.file(prefix + "-images-idx3-ubyte" + ext), idx_bytes({n, 28, 28}, fake_pixels(n)), gzip);
  write_idx_file(dir.file(prefix + "-labels-idx1-ubyte" + ext), idx_bytes({n}, labels), gzip);
}

// Why the real dataset cannot be read, or "" when it can.
std::string real_data_missing() {
  const std::string dir = data::default_fashion_mnist_dir();
  if (!std::filesystem::is_directory(dir))
    return "no Fashion-MNIST in " + dir + " (install Debian's dataset-fashion-mnist: scripts/install_deps.sh, or set " +
           "SYNCBN_FASHION_MNIST_DIR)";
  return "";
}

std::vector<std::int64_t> histogram(const Tensor& labels) {
  std::vector<std::int64_t> counts(10, 0);
  for (const std::int64_t label : labels.to_vector<std::int64_t>()) ++counts.at(static_cast<std::size_t>(label));
  return counts;
}

}  // namespace

TEST_CASE("load_fashion_mnist scales pixels to [0, 1], normalizes them and reads the labels", "[data][fashion_mnist]") {
  const bool gzip = GENERATE(true, false);
  CAPTURE(gzip);
  const TempDir dir;
  const std::vector<std::uint8_t> labels{3, 0, 9};
  write_fake_split(dir, "t10k", labels, gzip);
  const auto pixels = fake_pixels(3);

  const data::Dataset raw = load_fashion_mnist(Split::Test, dir.path().string(), -1, /*normalize=*/false);
  CHECK(raw.images.shape() == Shape{3, 1, 28, 28});
  CHECK(raw.images.dtype() == DType::Float32);
  CHECK(raw.images.device() == Device::cpu());
  CHECK(raw.labels.shape() == Shape{3});
  CHECK(raw.labels.dtype() == DType::Int64);
  CHECK(raw.labels.to_vector<std::int64_t>() == std::vector<std::int64_t>{3, 0, 9});
  const auto unit = raw.images.to_vector<float>();
  for (std::size_t k = 0; k < unit.size(); ++k) {
    if (unit[k] != static_cast<float>(pixels[k] / 255.0)) {
      FAIL_CHECK("pixel " << k << ": got " << unit[k] << ", expected " << pixels[k] << " / 255");
      break;
    }
  }

  const data::Dataset normalized = load_fashion_mnist(Split::Test, dir.path().string());
  const auto values = normalized.images.to_vector<float>();
  for (std::size_t k = 0; k < values.size(); ++k) {
    const double want = (pixels[k] / 255.0 - data::kFashionMnistMean) / data::kFashionMnistStd;
    if (std::abs(values[k] - want) > 1e-6 * (1 + std::abs(want))) {
      FAIL_CHECK("pixel " << k << ": got " << values[k] << ", expected " << want);
      break;
    }
  }
  CHECK(normalized.labels.to_vector<std::int64_t>() == raw.labels.to_vector<std::int64_t>());

  // limit keeps the first examples.
  const data::Dataset two = load_fashion_mnist(Split::Test, dir.path().string(), 2);
  CHECK(two.images.shape() == Shape{2, 1, 28, 28});
  CHECK(two.labels.to_vector<std::int64_t>() == std::vector<std::int64_t>{3, 0});
  CHECK(two.images.to_vector<float>() == std::vector<float>(values.begin(), values.begin() + 2 * kPixels));
  CHECK(load_fashion_mnist(Split::Test, dir.path().string(), 0).images.shape() == Shape{0, 1, 28, 28});
  CHECK(load_fashion_mnist(Split::Test, dir.path().string(), 100).labels.numel() == 3);
}

TEST_CASE("load_fashion_mnist names the missing file and how to install the dataset", "[data][fashion_mnist]") {
  const TempDir dir;
  const std::string base = dir.path().string() + "/train-images-idx3-ubyte";
  CHECK_THROWS_MATCHES(load_fashion_mnist(Split::Train, dir.path().string()), InvalidArgument,
                       MessageIs("load_fashion_mnist: '" + base + ".gz' not found (nor '" + base +
                                 "'), expected the Fashion-MNIST files there; install Debian's dataset-fashion-mnist "
                                 "(scripts/install_deps.sh) or point SYNCBN_FASHION_MNIST_DIR at a directory that holds "
                                 "them"));
  // The training files exist, the test split's do not.
  write_fake_split(dir, "train", {1, 2}, true);
  CHECK_THROWS_MATCHES(load_fashion_mnist(Split::Test, dir.path().string()), InvalidArgument,
                       MessageContains("load_fashion_mnist: '" + dir.path().string() + "/t10k-images-idx3-ubyte.gz' not found"));
  CHECK_THROWS_MATCHES(load_fashion_mnist(Split::Train, dir.path().string(), -2), InvalidArgument,
                       MessageIs("load_fashion_mnist: limit is -2, expected -1 (all examples) or a count >= 0"));
}

TEST_CASE("load_fashion_mnist refuses images that are not 28 x 28, a label count that differs and labels above 9",
          "[data][fashion_mnist]") {
  const TempDir dir;
  const std::string images = dir.file("train-images-idx3-ubyte");
  const std::string labels = dir.file("train-labels-idx1-ubyte");
  write_idx_file(images, idx_bytes({2, 27, 28}, std::vector<std::uint8_t>(2 * 27 * 28)), false);
  write_idx_file(labels, idx_bytes({2}, {1, 2}), false);
  CHECK_THROWS_MATCHES(load_fashion_mnist(Split::Train, dir.path().string()), InvalidArgument,
                       MessageIs("load_fashion_mnist: '" + images + "' holds 2 x 27 x 28 bytes, expected N x 28 x 28 images"));

  write_idx_file(images, idx_bytes({2, 28, 28}, std::vector<std::uint8_t>(2 * kPixels)), false);
  write_idx_file(labels, idx_bytes({3}, {1, 2, 3}), false);
  CHECK_THROWS_MATCHES(load_fashion_mnist(Split::Train, dir.path().string()), InvalidArgument,
                       MessageIs("load_fashion_mnist: '" + labels + "' holds 3 bytes, expected 2 labels (one per image of '" +
                                 images + "')"));

  write_idx_file(labels, idx_bytes({2}, {1, 10}), false);
  CHECK_THROWS_MATCHES(load_fashion_mnist(Split::Train, dir.path().string()), InvalidArgument,
                       MessageIs("load_fashion_mnist: '" + labels + "': label 1 is 10, expected 0..9"));
  // A bad IDX file is reported with this entry point's name.
  write_idx_file(labels, idx_bytes({2}, {1}), false);
  CHECK_THROWS_MATCHES(load_fashion_mnist(Split::Train, dir.path().string()), InvalidArgument,
                       MessageIs("load_fashion_mnist: '" + labels + "': the data ends after 1 bytes, expected 2 "
                                 "(dimensions 2), is the file truncated?"));
}

TEST_CASE("default_fashion_mnist_dir is SYNCBN_FASHION_MNIST_DIR when set, else Debian's directory",
          "[data][fashion_mnist]") {
  const char* saved = std::getenv("SYNCBN_FASHION_MNIST_DIR");
  const std::string previous = saved != nullptr ? saved : "";
  ::unsetenv("SYNCBN_FASHION_MNIST_DIR");
  CHECK(data::default_fashion_mnist_dir() == "/usr/share/datasets/fashion-mnist");
  ::setenv("SYNCBN_FASHION_MNIST_DIR", "", 1);
  CHECK(data::default_fashion_mnist_dir() == "/usr/share/datasets/fashion-mnist");
  ::setenv("SYNCBN_FASHION_MNIST_DIR", "/data/fmnist", 1);
  CHECK(data::default_fashion_mnist_dir() == "/data/fmnist");
  if (saved != nullptr)
    ::setenv("SYNCBN_FASHION_MNIST_DIR", previous.c_str(), 1);
  else
    ::unsetenv("SYNCBN_FASHION_MNIST_DIR");
}

TEST_CASE("The class names are Fashion-MNIST's, by label", "[data][fashion_mnist]") {
  CHECK(data::kFashionMnistClasses[0] == "T-shirt/top");
  CHECK(data::kFashionMnistClasses[5] == "Sandal");
  CHECK(data::kFashionMnistClasses[9] == "Ankle boot");
  CHECK(std::string(data::split_name(Split::Train)) == "train");
  CHECK(std::string(data::split_name(Split::Test)) == "test");
}

TEST_CASE("The real training split has 60000 images, 6000 of each class, and the stated pixel mean and std",
          "[data][fashion_mnist][dataset]") {
  if (const std::string why = real_data_missing(); !why.empty()) SYNCBN_SKIP(why);
  const data::Dataset train = load_fashion_mnist(Split::Train, data::default_fashion_mnist_dir(), -1, false);
  CHECK(train.images.shape() == Shape{60000, 1, 28, 28});
  CHECK(train.labels.shape() == Shape{60000});
  CHECK(histogram(train.labels) == std::vector<std::int64_t>(10, 6000));
  CHECK(train.labels.rows(0, 10).to_vector<std::int64_t>() == std::vector<std::int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
  const auto pixels = train.images.to_vector<double>();
  double sum = 0, sum_sq = 0;
  for (const double p : pixels) {
    sum += p;
    sum_sq += p * p;
  }
  const auto [lo, hi] = std::minmax_element(pixels.begin(), pixels.end());
  CHECK(*lo == 0.0);
  CHECK(*hi == 1.0);
  const double mean = sum / static_cast<double>(pixels.size());
  const double stddev = std::sqrt(sum_sq / static_cast<double>(pixels.size()) - mean * mean);
  // The constants are these, rounded to 4 digits (0.28604, 0.35302).
  CHECK_THAT(mean, Catch::Matchers::WithinAbs(data::kFashionMnistMean, 5e-5));
  CHECK_THAT(stddev, Catch::Matchers::WithinAbs(data::kFashionMnistStd, 5e-5));

  // Normalized: (pixel - mean) / std.
  const data::Dataset normalized = load_fashion_mnist(Split::Train, data::default_fashion_mnist_dir(), 1000);
  CHECK(normalized.images.shape() == Shape{1000, 1, 28, 28});
  const auto first = normalized.images.to_vector<double>();
  CHECK_THAT(first[0], Catch::Matchers::WithinAbs((pixels[0] - data::kFashionMnistMean) / data::kFashionMnistStd, 1e-6));
}

TEST_CASE("The real test split has 10000 images, 1000 of each class", "[data][fashion_mnist][dataset]") {
  if (const std::string why = real_data_missing(); !why.empty()) SYNCBN_SKIP(why);
  const data::Dataset test = load_fashion_mnist(Split::Test);
  CHECK(test.images.shape() == Shape{10000, 1, 28, 28});
  CHECK(histogram(test.labels) == std::vector<std::int64_t>(10, 1000));
  CHECK(test.labels.rows(0, 10).to_vector<std::int64_t>() == std::vector<std::int64_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7});
  const auto values = test.images.to_vector<float>();
  const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  CHECK(*lo == static_cast<float>(-data::kFashionMnistMean / data::kFashionMnistStd));
  CHECK_THAT(*hi, Catch::Matchers::WithinRel((1.0 - data::kFashionMnistMean) / data::kFashionMnistStd, 1e-6));
}
