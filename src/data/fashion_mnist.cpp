// Fashion-MNIST from its original IDX files.

#include "syncbn/data/fashion_mnist.hpp"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "syncbn/data/idx.hpp"
#include "syncbn/error.hpp"

namespace syncbn::data {
namespace {

constexpr const char* kOp = "load_fashion_mnist";
constexpr std::int64_t kSide = 28;

std::string dims_text(const std::vector<std::int64_t>& dims) {
  std::ostringstream out;
  for (std::size_t i = 0; i < dims.size(); ++i) out << (i == 0 ? "" : " x ") << dims[i];
  return out.str();
}

// The file `name` of `dir`, gzip-compressed (name.gz) or plain.
std::string find_file(const std::string& dir, const std::string& name) {
  const std::filesystem::path base(dir);
  std::error_code ec;
  const std::string gz = (base / (name + ".gz")).string();
  if (std::filesystem::exists(gz, ec)) return gz;
  const std::string plain = (base / name).string();
  if (std::filesystem::exists(plain, ec)) return plain;
  SYNCBN_THROW(InvalidArgument, kOp, ": '", gz, "' not found (nor '", plain,
               "'), expected the Fashion-MNIST files there; install Debian's dataset-fashion-mnist "
               "(scripts/install_deps.sh) or point SYNCBN_FASHION_MNIST_DIR at a directory that holds them");
}

}  // namespace

const char* split_name(Split split) noexcept { return split == Split::Train ? "train" : "test"; }

std::string default_fashion_mnist_dir() {
  const char* dir = std::getenv("SYNCBN_FASHION_MNIST_DIR");
  return dir != nullptr && *dir != '\0' ? std::string(dir) : std::string("/usr/share/datasets/fashion-mnist");
}

Dataset load_fashion_mnist(Split split, const std::string& dir, std::int64_t limit, bool normalize) {
  SYNCBN_CHECK(limit >= -1, kOp, ": limit is ", limit, ", expected -1 (all examples) or a count >= 0");
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::string images_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_file(dir, prefix + "-labels-idx1-ubyte");
  const IdxArray images = read_idx(images_path, kOp);
  const IdxArray labels = read_idx(labels_path, kOp);
  SYNCBN_CHECK(images.dims.size() == 3 && images.dims[1] == kSide && images.dims[2] == kSide, kOp, ": '", images_path,
               "' holds ", dims_text(images.dims), " bytes, expected N x 28 x 28 images");
  SYNCBN_CHECK(labels.dims.size() == 1 && labels.dims[0] == images.dims[0], kOp, ": '", labels_path, "' holds ",
               dims_text(labels.dims), " bytes, expected ", images.dims[0], " labels (one per image of '", images_path,
               "')");

  const std::int64_t n = limit < 0 ? images.dims[0] : std::min(limit, images.dims[0]);
  for (std::int64_t i = 0; i < n; ++i) {
    const int label = labels.bytes[static_cast<std::size_t>(i)];
    SYNCBN_CHECK(label < static_cast<int>(kFashionMnistClasses.size()), kOp, ": '", labels_path, "': label ", i,
                 " is ", label, ", expected 0..9");
  }

  Dataset out;
  out.images = Tensor::empty(Shape{n, 1, kSide, kSide}, DType::Float32, Device::cpu());
  out.labels = Tensor::empty(Shape{n}, DType::Int64, Device::cpu());
  // pixel / 255, then normalised: one affine map a * pixel + b per byte value.
  const double a = normalize ? 1.0 / (255.0 * kFashionMnistStd) : 1.0 / 255.0;
  const double b = normalize ? -kFashionMnistMean / kFashionMnistStd : 0.0;
  float table[256];
  for (int v = 0; v < 256; ++v) table[v] = static_cast<float>(a * v + b);
  float* pixels = out.images.data<float>();
  const std::size_t count = static_cast<std::size_t>(n * kSide * kSide);
  for (std::size_t i = 0; i < count; ++i) pixels[i] = table[images.bytes[i]];
  std::int64_t* classes = out.labels.data<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) classes[i] = labels.bytes[static_cast<std::size_t>(i)];
  return out;
}

}  // namespace syncbn::data
