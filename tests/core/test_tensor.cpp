// Tensor: factories, host access, conversions, views and argument errors.
// Device-generic: also runs on cuda:0 in the CUDA test binary.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/core/tensor.hpp"

using syncbn::Device;
using syncbn::DType;
using syncbn::InvalidArgument;
using syncbn::Shape;
using syncbn::Tensor;
using syncbn::testing::check_equal;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

TEST_CASE("Factories fill every element with the requested value and dtype", "[tensor]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::BFloat16, DType::Int64);
  CAPTURE(dtype);
  const Device dev = test_device();
  const Tensor z = Tensor::zeros(Shape{3, 4}, dtype, dev);
  CHECK(z.dtype() == dtype);
  CHECK(z.device() == dev);
  CHECK(z.shape() == Shape{3, 4});
  check_equal(z.to_vector<double>(), std::vector<double>(12, 0.0), "zeros");
  check_equal(Tensor::ones(Shape{5}, dtype, dev).to_vector<double>(), std::vector<double>(5, 1.0), "ones");
  check_equal(Tensor::full(Shape{2, 2, 2}, -3.0, dtype, dev).to_vector<double>(), std::vector<double>(8, -3.0), "full");
  CHECK(Tensor::full(Shape{}, 2.5, DType::Float32, dev).item() == 2.5);
}

TEST_CASE("from_vector and to_vector round-trip values exactly on every device", "[tensor]") {
  const Device dev = test_device();
  const std::vector<float> f{1.5f, -2.25f, 3.0f, 1e-7f, 65504.0f, -0.0f};
  check_equal(Tensor::from_vector(f, Shape{2, 3}, dev).to_vector<float>(), f, "float32");
  const std::vector<double> d{1e300, -1e-300, 0.1, 3.0};
  check_equal(Tensor::from_vector(d, Shape{4}, dev).to_vector<double>(), d, "float64");
  const std::vector<std::int64_t> i{-5, 0, 1LL << 40, 7};
  check_equal(Tensor::from_vector(i, Shape{2, 2}, dev).to_vector<std::int64_t>(), i, "int64");
  // to_vector converts: float32 elements read as double are exact.
  const auto as_double = Tensor::from_vector(f, Shape{6}, dev).to_vector<double>();
  for (std::size_t k = 0; k < f.size(); ++k) CHECK(as_double[k] == static_cast<double>(f[k]));
}

TEST_CASE("from_vector rejects a value count that does not match the shape", "[tensor]") {
  CHECK_THROWS_MATCHES(Tensor::from_vector(std::vector<float>{1, 2, 3}, Shape{2, 2}, test_device()), InvalidArgument,
                       MessageIs("Tensor::from_vector: 3 values, expected 4 for shape (2, 2)"));
}

TEST_CASE("randn and rand give the same numbers on every device and dtype for the same seed", "[tensor]") {
  const std::uint64_t seed = syncbn::testing::kSeed;
  CAPTURE(seed);
  const Shape shape{257, 3};
  const Tensor host64 = Tensor::randn(shape, seed, DType::Float64, Device::cpu());
  const Tensor dev64 = Tensor::randn(shape, seed, DType::Float64, test_device());
  check_equal(dev64.to_vector<double>(), host64.to_vector<double>(), "randn float64 across devices");
  // float32 samples are the float64 samples rounded once.
  const auto f32 = Tensor::randn(shape, seed, DType::Float32, test_device()).to_vector<float>();
  const auto f64 = host64.to_vector<double>();
  for (std::size_t k = 0; k < f32.size(); ++k) REQUIRE(f32[k] == static_cast<float>(f64[k]));
  // Other seeds give other numbers; rand differs from randn.
  CHECK(Tensor::randn(shape, seed + 1, DType::Float64).to_vector<double>() != f64);
  const auto u = Tensor::rand(shape, seed, DType::Float64, test_device(), -2.0, 3.0).to_vector<double>();
  check_equal(u, Tensor::rand(shape, seed, DType::Float64, Device::cpu(), -2.0, 3.0).to_vector<double>(),
              "rand across devices");
  for (double x : u) REQUIRE((x >= -2.0 && x < 3.0));
}

TEST_CASE("randn samples have the requested mean and standard deviation", "[tensor]") {
  const std::uint64_t seed = syncbn::testing::kSeed;
  CAPTURE(seed);
  const auto x = Tensor::randn(Shape{200000}, seed, DType::Float64, test_device(), 3.0, 2.0).to_vector<double>();
  double mean = std::accumulate(x.begin(), x.end(), 0.0) / static_cast<double>(x.size());
  double var = 0;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= static_cast<double>(x.size());
  // 200k samples: the standard error of the mean is 2/sqrt(2e5) = 0.0045.
  CHECK_THAT(mean, Catch::Matchers::WithinAbs(3.0, 0.03));
  CHECK_THAT(std::sqrt(var), Catch::Matchers::WithinAbs(2.0, 0.03));
}

TEST_CASE("clone and to(Device) make independent copies", "[tensor]") {
  const Device dev = test_device();
  const Tensor a = Tensor::from_vector(std::vector<float>{1, 2, 3}, Shape{3}, dev);
  const Tensor b = a.clone();
  CHECK_FALSE(b.shares_storage_with(a));
  b.fill_(9.0);
  check_equal(a.to_vector<float>(), std::vector<float>{1, 2, 3}, "original after writing the clone");
  const Tensor on_host = a.to(Device::cpu(1));
  CHECK(on_host.device() == Device::cpu(1));
  const Tensor back = on_host.to(dev);
  check_equal(back.to_vector<float>(), std::vector<float>{1, 2, 3}, "round trip through the host");
}

TEST_CASE("rows is a zero-copy view of a range along dimension 0", "[tensor]") {
  const Device dev = test_device();
  std::vector<float> values(12);
  std::iota(values.begin(), values.end(), 0.0f);
  const Tensor a = Tensor::from_vector(values, Shape{4, 3}, dev);
  const Tensor mid = a.rows(1, 3);
  CHECK(mid.shape() == Shape{2, 3});
  CHECK(mid.shares_storage_with(a));
  check_equal(mid.to_vector<float>(), std::vector<float>{3, 4, 5, 6, 7, 8}, "rows 1..3");
  mid.fill_(-1.0);
  check_equal(a.to_vector<float>(), std::vector<float>{0, 1, 2, -1, -1, -1, -1, -1, -1, 9, 10, 11},
              "writes through the view");
  CHECK(a.rows(2, 2).numel() == 0);
  CHECK(a.rows(2, 2).shape() == Shape{0, 3});
  CHECK_THROWS_MATCHES(a.rows(3, 5), InvalidArgument,
                       MessageIs("Tensor::rows: range [3, 5) is invalid, expected 0 <= begin <= end <= 4"));
  CHECK_THROWS_AS(Tensor::zeros(Shape{}, DType::Float32, dev).rows(0, 0), InvalidArgument);
}

TEST_CASE("reshape views the same elements with another shape", "[tensor]") {
  const Tensor a = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, Shape{2, 3}, test_device());
  const Tensor b = a.reshape(Shape{3, 1, 2});
  CHECK(b.shares_storage_with(a));
  CHECK(b.shape() == Shape{3, 1, 2});
  CHECK_THROWS_MATCHES(a.reshape(Shape{4}), InvalidArgument,
                       MessageIs("Tensor::reshape: shape (4) has 4 elements, expected 6 (the elements of (2, 3))"));
}

TEST_CASE("copy_ copies across devices and rejects other shapes or dtypes", "[tensor]") {
  const Tensor dst = Tensor::zeros(Shape{2, 2}, DType::Float32, test_device());
  const Tensor src = Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, Shape{2, 2}, Device::cpu(3));
  dst.copy_(src);
  check_equal(dst.to_vector<float>(), std::vector<float>{1, 2, 3, 4}, "copy_");
  CHECK_THROWS_MATCHES(dst.copy_(Tensor::zeros(Shape{4}, DType::Float32)), InvalidArgument,
                       MessageIs("Tensor::copy_: source has shape (4), expected (2, 2)"));
  CHECK_THROWS_MATCHES(dst.copy_(Tensor::zeros(Shape{2, 2}, DType::Float64)), InvalidArgument,
                       MessageIs("Tensor::copy_: source has dtype float64, expected float32"));
}

TEST_CASE("Typed data access checks the dtype", "[tensor]") {
  const Tensor a = Tensor::zeros(Shape{2}, DType::Float32, test_device());
  CHECK(a.data<float>() != nullptr);
  CHECK_THROWS_MATCHES(a.data<double>(), InvalidArgument,
                       MessageIs("Tensor::data: requested float64 elements, expected float32 (the tensor's dtype)"));
}

TEST_CASE("item needs exactly one element", "[tensor]") {
  CHECK(Tensor::full(Shape{1, 1}, 4.0, DType::Float64, test_device()).item() == 4.0);
  CHECK_THROWS_MATCHES(Tensor::zeros(Shape{2}).item(), InvalidArgument,
                       MessageIs("Tensor::item: the tensor has 2 elements, expected 1"));
}

TEST_CASE("An undefined tensor is rejected by every operation", "[tensor]") {
  const Tensor undefined;
  CHECK_FALSE(undefined.defined());
  CHECK(undefined.raw_data() == nullptr);
  CHECK_THROWS_MATCHES(undefined.to(Device::cpu()), InvalidArgument,
                       MessageIs("Tensor::to: the tensor is undefined, expected a tensor with storage"));
  CHECK_THROWS_AS(undefined.to_vector<float>(), InvalidArgument);
  CHECK_THROWS_AS(undefined.clone(), InvalidArgument);
}

TEST_CASE("Empty tensors have storage but no elements", "[tensor]") {
  const Tensor e = Tensor::zeros(Shape{0, 5}, DType::Float32, test_device());
  CHECK(e.defined());
  CHECK(e.numel() == 0);
  CHECK(e.to_vector<float>().empty());
  CHECK(e.clone().numel() == 0);
}

TEST_CASE("A CPU tensor can be relabelled as another logical CPU device without a copy", "[tensor]") {
  const Tensor a = Tensor::ones(Shape{3});
  const Tensor b = a.relabel(Device::cpu(5));
  CHECK(b.device() == Device::cpu(5));
  CHECK(b.shares_storage_with(a));
  CHECK_THROWS_AS(a.relabel(Device::cuda(0)), InvalidArgument);
}

// ASan's and TSan's allocators end the process on an impossible request (GCC
// says so with __SANITIZE_*__, Clang with __has_feature).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
constexpr bool kSanitized = __has_feature(address_sanitizer) || __has_feature(thread_sanitizer);
#else
constexpr bool kSanitized = false;
#endif

TEST_CASE("Tensors too large to address or to allocate are clear errors", "[tensor]") {
  const Device dev = test_device();
  CHECK_THROWS_MATCHES(Tensor::zeros(Shape{std::int64_t{1} << 62}, DType::Float32, dev), InvalidArgument,
                       MessageIs("Tensor: (4611686018427387904) of float32 needs more than 9223372036854775807 bytes, "
                                 "expected a tensor whose size in bytes fits int64"));
  if (!kSanitized && dev.is_cpu()) {
    CHECK_THROWS_MATCHES(Tensor::empty(Shape{std::int64_t{1} << 50}, DType::Float32, dev), syncbn::OutOfMemory,
                         MessageIs("Tensor: cannot allocate (1125899906842624) of float32 (4503599627370496 bytes) on " +
                                   dev.str() + ": out of memory, expected a tensor that fits in the device's free memory"));
  }
}

TEST_CASE("Floating values convert to int64 with saturation, and int64 fills take only what int64 holds", "[tensor]") {
  const Device dev = test_device();
  const double inf = std::numeric_limits<double>::infinity();
  const Tensor x = Tensor::from_vector(std::vector<double>{std::nan(""), inf, -inf, 1e30, -1e30, -3.7, 2.9},
                                       Shape{7}, dev);
  const std::vector<std::int64_t> want{0, INT64_MAX, INT64_MIN, INT64_MAX, INT64_MIN, -3, 2};
  CHECK(x.to(DType::Int64).to_vector<std::int64_t>() == want);
  CHECK(x.to_vector<std::int64_t>() == want);
  CHECK_THROWS_MATCHES(Tensor::full(Shape{2}, std::nan(""), DType::Int64, dev), InvalidArgument,
                       MessageIs("Tensor::full: value nan cannot be stored as int64, expected a finite value within "
                                 "its range"));
  const Tensor n = Tensor::zeros(Shape{2}, DType::Int64, dev);
  CHECK_THROWS_MATCHES(n.fill_(1e300), InvalidArgument,
                       MessageIs("Tensor::fill_: value 1e+300 cannot be stored as int64, expected a finite value "
                                 "within its range"));
  CHECK(n.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 0});
}

TEST_CASE("onto of an undefined tensor names onto", "[tensor]") {
  CHECK_THROWS_MATCHES(Tensor().onto(Device::cpu(1)), InvalidArgument,
                       syncbn::testing::MessageContains("Tensor::onto: "));
  CHECK_THROWS_MATCHES(Tensor().onto(Device::cpu(0)), InvalidArgument,
                       syncbn::testing::MessageContains("Tensor::onto: "));
}

TEST_CASE("A tensor over the caller's memory reads and writes it and never frees it", "[tensor]") {
  std::vector<float> values{1, 2, 3, 4, 5, 6};
  {
    const Tensor t = Tensor::from_blob(values.data(), Shape{2, 3}, DType::Float32, Device::cpu(0));
    CHECK(t.to_vector<double>() == std::vector<double>{1, 2, 3, 4, 5, 6});
    t.rows(1, 2).fill_(7.0);
    const Tensor copy = t;  // the last of the copies goes with this scope
  }
  CHECK(values == std::vector<float>{1, 2, 3, 7, 7, 7});
  CHECK_THROWS_MATCHES(Tensor::from_blob(nullptr, Shape{2}, DType::Float32, Device::cpu(0)), InvalidArgument,
                       MessageIs("Tensor::from_blob: data is null for (2), expected a pointer to 2 elements"));
  CHECK(Tensor::from_blob(nullptr, Shape{0}, DType::Float32, Device::cpu(0)).numel() == 0);
}
