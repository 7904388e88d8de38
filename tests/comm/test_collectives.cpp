// Cross-device collectives against float64 references: scatter, gather,
// reduce_add_coalesced, broadcast_coalesced. Device-generic: in the CUDA test
// binary every replica device is cuda:0 (logical replicas on one GPU).

#include <catch2/catch.hpp>

#include <cstdint>
#include <numeric>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/comm/collectives.hpp"
#include "syncbn/error.hpp"

using syncbn::Device;
using syncbn::DType;
using syncbn::InvalidArgument;
using syncbn::Shape;
using syncbn::Tensor;
using syncbn::comm::broadcast_coalesced;
using syncbn::comm::even_chunk_sizes;
using syncbn::comm::gather;
using syncbn::comm::reduce_add_coalesced;
using syncbn::comm::scatter;
using syncbn::testing::check_close;
using syncbn::testing::check_equal;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;

TEST_CASE("Even chunk sizes differ by at most one, larger chunks first", "[comm]") {
  CHECK(even_chunk_sizes(10, 4) == std::vector<std::int64_t>{3, 3, 2, 2});
  CHECK(even_chunk_sizes(2, 4) == std::vector<std::int64_t>{1, 1, 0, 0});
  CHECK(even_chunk_sizes(0, 3) == std::vector<std::int64_t>{0, 0, 0});
  CHECK(even_chunk_sizes(8, 1) == std::vector<std::int64_t>{8});
  CHECK_THROWS_MATCHES(even_chunk_sizes(5, 0), InvalidArgument,
                       MessageIs("even_chunk_sizes: 0 parts, expected at least 1"));
}

TEST_CASE("Scatter then gather is the identity for even, uneven and empty chunks", "[comm]") {
  const int k = GENERATE(1, 2, 3, 4, 5, 8);
  const std::int64_t n = GENERATE(0, 1, 5, 17);
  const bool custom = GENERATE(false, true);
  CAPTURE(k, n, custom, syncbn::testing::kSeed);
  const Tensor input = Tensor::randn(Shape{n, 3, 2}, syncbn::testing::kSeed, DType::Float32, test_device());
  std::vector<std::int64_t> sizes;
  if (custom) {
    // Everything on the last replica: every other chunk is empty.
    sizes.assign(static_cast<std::size_t>(k), 0);
    sizes.back() = n;
  }
  const auto devices = test_devices(k);
  const auto chunks = scatter(input, devices, sizes);
  REQUIRE(chunks.size() == static_cast<std::size_t>(k));
  const auto want_sizes = custom ? sizes : even_chunk_sizes(n, k);
  std::int64_t begin = 0;
  for (int i = 0; i < k; ++i) {
    const Tensor& c = chunks[static_cast<std::size_t>(i)];
    CHECK(c.device() == devices[static_cast<std::size_t>(i)]);
    CHECK(c.shape() == Shape{want_sizes[static_cast<std::size_t>(i)], 3, 2});
    check_equal(c.to_vector<float>(), input.rows(begin, begin + c.size(0)).to_vector<float>(), "chunk content");
    begin += c.size(0);
  }
  const Tensor back = gather(chunks, test_device());
  CHECK(back.shape() == input.shape());
  check_equal(back.to_vector<float>(), input.to_vector<float>(), "gather(scatter(x))");
  CHECK_FALSE(back.shares_storage_with(input));
}

TEST_CASE("Scatter onto the input's own memory is zero-copy", "[comm]") {
  const Tensor input = Tensor::ones(Shape{6, 2}, DType::Float32, test_device());
  for (const Tensor& c : scatter(input, test_devices(3))) CHECK(c.shares_storage_with(input));
}

TEST_CASE("Gather collects chunks from different devices", "[comm]") {
  const Tensor a = Tensor::full(Shape{1, 2}, 1.0, DType::Float64, test_device(0));
  const Tensor b = Tensor::full(Shape{2, 2}, 2.0, DType::Float64, Device::cpu(3));
  const Tensor out = gather({a, b}, test_device(1));
  CHECK(out.device() == test_device(1));
  CHECK(out.to_vector<double>() == std::vector<double>{1, 1, 2, 2, 2, 2});
}

TEST_CASE("Scatter and gather reject bad arguments", "[comm]") {
  const Tensor x = Tensor::ones(Shape{4, 2}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(scatter(x, {}), InvalidArgument, MessageIs("scatter: no devices, expected at least one"));
  CHECK_THROWS_MATCHES(scatter(Tensor::ones(Shape{}), test_devices(2)), InvalidArgument,
                       MessageIs("scatter: input is a scalar, expected rank >= 1"));
  CHECK_THROWS_MATCHES(scatter(x, test_devices(2), {1, 2, 1}), InvalidArgument,
                       MessageIs("scatter: 3 chunk sizes, expected 2 (one per device)"));
  CHECK_THROWS_MATCHES(scatter(x, test_devices(2), {5, -1}), InvalidArgument,
                       MessageIs("scatter: chunk 0 has size 5, expected 0 to 4 (the input's rows)"));
  CHECK_THROWS_MATCHES(scatter(x, test_devices(2), {1, 2}), InvalidArgument,
                       MessageIs("scatter: chunk sizes sum to 3, expected 4 (the input's dimension 0)"));
  CHECK_THROWS_MATCHES(gather({}, test_device()), InvalidArgument, MessageIs("gather: no tensors, expected at least one"));
  CHECK_THROWS_MATCHES(gather({x, Tensor::ones(Shape{1, 3}, DType::Float32, test_device())}, test_device()),
                       InvalidArgument,
                       MessageIs("gather: tensor 1 has shape (1, 3), expected (1, 2) (the trailing dimensions of tensor 0)"));
  CHECK_THROWS_MATCHES(gather({x, Tensor::ones(Shape{1, 2}, DType::Float64, test_device())}, test_device()),
                       InvalidArgument, MessageIs("gather: tensor 1 has dtype float64, expected float32 (as tensor 0)"));
}

TEST_CASE("reduce_add_coalesced sums every replica's tensors in replica order with float64 accumulation",
          "[comm]") {
  const int k = GENERATE(1, 2, 3, 4, 8);
  CAPTURE(k, syncbn::testing::kSeed);
  // A group mixes shapes and dtypes, like a model's parameter gradients.
  const std::vector<Shape> shapes{Shape{7, 3}, Shape{5}, Shape{}, Shape{2, 2, 2}, Shape{0, 4}};
  const std::vector<DType> dtypes{DType::Float32, DType::Float64, DType::Float32, DType::Float32, DType::Float64};
  std::vector<std::vector<Tensor>> groups;
  for (int r = 0; r < k; ++r) {
    std::vector<Tensor> group;
    for (std::size_t j = 0; j < shapes.size(); ++j)
      group.push_back(Tensor::randn(shapes[j], syncbn::testing::kSeed + 100 * static_cast<std::uint64_t>(r) + j,
                                    dtypes[j], test_device(r), 0.0, 1e3));
    groups.push_back(group);
  }
  const Device target = test_device(0);
  const auto out = reduce_add_coalesced(groups, target);
  REQUIRE(out.size() == shapes.size());
  for (std::size_t j = 0; j < shapes.size(); ++j) {
    CHECK(out[j].shape() == shapes[j]);
    CHECK(out[j].dtype() == dtypes[j]);
    CHECK(out[j].device() == target);
    std::vector<double> want(static_cast<std::size_t>(shapes[j].numel()), 0.0);
    for (int r = 0; r < k; ++r) {
      const auto v = groups[static_cast<std::size_t>(r)][j].to_vector<double>();
      for (std::size_t i = 0; i < want.size(); ++i) want[i] += v[i];
    }
    check_close(out[j], want, syncbn::testing::tolerance_for(dtypes[j]), "tensor " + std::to_string(j));
    // Bit-exact: the float64 sum in replica order, rounded once.
    if (dtypes[j] == DType::Float32) {
      std::vector<float> rounded;
      for (double w : want) rounded.push_back(static_cast<float>(w));
      check_equal(out[j].to_vector<float>(), rounded, "deterministic float32 result " + std::to_string(j));
    }
  }
  // Inputs are not modified.
  CHECK(groups[0][1].to_vector<double>() ==
        Tensor::randn(shapes[1], syncbn::testing::kSeed + 1, DType::Float64, Device::cpu(), 0.0, 1e3).to_vector<double>());
}

TEST_CASE("reduce_add_coalesced reduces onto another device than the replicas'", "[comm]") {
  const std::vector<std::vector<Tensor>> groups{{Tensor::full(Shape{3}, 1.0, DType::Float32, test_device(0))},
                                                {Tensor::full(Shape{3}, 2.0, DType::Float32, Device::cpu(2))}};
  const auto out = reduce_add_coalesced(groups, Device::cpu(1));
  CHECK(out[0].device() == Device::cpu(1));
  CHECK(out[0].to_vector<float>() == std::vector<float>{3, 3, 3});
}

TEST_CASE("reduce_add_coalesced rejects inconsistent groups", "[comm]") {
  const Device d0 = test_device(0), d1 = test_device(1);
  const Tensor a = Tensor::ones(Shape{2}, DType::Float32, d0);
  CHECK_THROWS_MATCHES(reduce_add_coalesced({}, d0), InvalidArgument,
                       MessageIs("reduce_add_coalesced: no groups, expected one per replica"));
  CHECK_THROWS_MATCHES(reduce_add_coalesced({{a, a}, {Tensor::ones(Shape{2}, DType::Float32, d1)}}, d0),
                       InvalidArgument, MessageIs("reduce_add_coalesced: group 1 has 1 tensors, expected 2 (as group 0)"));
  CHECK_THROWS_MATCHES(reduce_add_coalesced({{a}, {Tensor::ones(Shape{3}, DType::Float32, d1)}}, d0), InvalidArgument,
                       MessageIs("reduce_add_coalesced: group 1 tensor 0 has shape (3), expected (2) (as group 0)"));
  CHECK_THROWS_MATCHES(reduce_add_coalesced({{a}, {Tensor::ones(Shape{2}, DType::Float64, d1)}}, d0), InvalidArgument,
                       MessageIs("reduce_add_coalesced: group 1 tensor 0 has dtype float64, expected float32 (as group 0)"));
  CHECK_THROWS_MATCHES(reduce_add_coalesced({{Tensor::ones(Shape{2}, DType::Int64, d0)}}, d0), InvalidArgument,
                       MessageIs("reduce_add_coalesced: group 0 tensor 0 has dtype int64, expected float32 or float64"));
  const Device elsewhere = syncbn::testing::test_on_cuda() ? Device::cpu(0) : Device::cpu(5);
  CHECK_THROWS_MATCHES(reduce_add_coalesced({{a, Tensor::ones(Shape{2}, DType::Float32, elsewhere)}}, d0),
                       InvalidArgument,
                       MessageIs("reduce_add_coalesced: group 0 tensor 1 is on " + elsewhere.str() + ", expected " +
                                 d0.str() + " (the device of the group's tensor 0)"));
  const std::vector<std::vector<Tensor>> too_many(65, std::vector<Tensor>{a});
  CHECK_THROWS_MATCHES(reduce_add_coalesced(too_many, d0), InvalidArgument,
                       MessageIs("reduce_add_coalesced: 65 groups, expected at most 64"));
}

TEST_CASE("broadcast_coalesced gives every device its own copy of every tensor", "[comm]") {
  const int k = GENERATE(1, 2, 4, 8);
  CAPTURE(k, syncbn::testing::kSeed);
  const std::vector<Tensor> tensors{
      Tensor::randn(Shape{4, 3}, syncbn::testing::kSeed, DType::Float32, test_device()),
      Tensor::from_vector(std::vector<std::int64_t>{7}, Shape{}, test_device()),
      Tensor::randn(Shape{5}, syncbn::testing::kSeed + 1, DType::Float64, test_device()),
      Tensor::randn(Shape{2}, syncbn::testing::kSeed + 2, DType::Float32, test_device())};
  const auto devices = test_devices(k);
  const auto copies = broadcast_coalesced(tensors, devices);
  REQUIRE(copies.size() == static_cast<std::size_t>(k));
  for (int d = 0; d < k; ++d) {
    const auto& mine = copies[static_cast<std::size_t>(d)];
    REQUIRE(mine.size() == tensors.size());
    for (std::size_t j = 0; j < tensors.size(); ++j) {
      CHECK(mine[j].device() == devices[static_cast<std::size_t>(d)]);
      CHECK(mine[j].shape() == tensors[j].shape());
      CHECK(mine[j].dtype() == tensors[j].dtype());
      CHECK_FALSE(mine[j].shares_storage_with(tensors[j]));
      check_equal(mine[j].to_vector<double>(), tensors[j].to_vector<double>(), "copy of tensor " + std::to_string(j));
    }
    // Coalesced: the float32 tensors of one device share one buffer.
    CHECK(mine[0].shares_storage_with(mine[3]));
  }
  // Copies are independent of the source and of each other.
  copies[0][0].fill_(0.0);
  CHECK(tensors[0].to_vector<float>() != copies[0][0].to_vector<float>());
  if (k > 1) CHECK(copies[1][0].to_vector<float>() == tensors[0].to_vector<float>());
}

TEST_CASE("broadcast_coalesced rejects tensors on different devices and empty device lists", "[comm]") {
  const Tensor a = Tensor::ones(Shape{2}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(broadcast_coalesced({a}, {}), InvalidArgument,
                       MessageIs("broadcast_coalesced: no devices, expected at least one"));
  const Device elsewhere = syncbn::testing::test_on_cuda() ? Device::cpu(0) : Device::cpu(4);
  CHECK_THROWS_MATCHES(broadcast_coalesced({a, Tensor::ones(Shape{2}, DType::Float32, elsewhere)}, test_devices(2)),
                       InvalidArgument,
                       MessageIs("broadcast_coalesced: tensor 1 is on " + elsewhere.str() + ", expected " +
                                 a.device().str() + " (as tensor 0)"));
}

TEST_CASE("Chunk sizes that would overflow their sum are rejected", "[comm]") {
  const Tensor x = Tensor::randn(Shape{4, 2}, 1, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(scatter(x, test_devices(2), {INT64_MAX, INT64_MAX}), InvalidArgument,
                       MessageIs("scatter: chunk 0 has size 9223372036854775807, expected 0 to 4 (the input's rows)"));
}
