// HostMoments: the host's one Chan merge, against the moments of the union
// computed directly in long double, and its refusals.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/error.hpp"

using syncbn::InvalidArgument;
using syncbn::Shape;
using syncbn::Tensor;
using syncbn::core::HostMoments;
using syncbn::testing::kSeed;
using syncbn::testing::MessageIs;

namespace {

struct Part {
  std::int64_t count;
  std::vector<double> mean, m2;
};

// The moments of rows [begin, end) of an (rows, c) table, two passes in long double.
Part moments_of(const std::vector<double>& v, std::int64_t begin, std::int64_t end, std::int64_t c) {
  Part p{end - begin, std::vector<double>(static_cast<std::size_t>(c), 0.0),
         std::vector<double>(static_cast<std::size_t>(c), 0.0)};
  for (std::int64_t j = 0; j < c && end > begin; ++j) {
    long double sum = 0;
    for (std::int64_t i = begin; i < end; ++i) sum += v[static_cast<std::size_t>(i * c + j)];
    const long double mean = sum / static_cast<long double>(end - begin);
    long double m2 = 0;
    for (std::int64_t i = begin; i < end; ++i) {
      const long double d = v[static_cast<std::size_t>(i * c + j)] - mean;
      m2 += d * d;
    }
    p.mean[static_cast<std::size_t>(j)] = static_cast<double>(mean);
    p.m2[static_cast<std::size_t>(j)] = static_cast<double>(m2);
  }
  return p;
}

}  // namespace

TEST_CASE("HostMoments merges parts in order into the moments of their union", "[batchnorm][merge]") {
  const double center = GENERATE(0.0, 1e4);
  CAPTURE(kSeed, center);
  const std::int64_t c = 5;
  // Parts of 7, 0, 1, 12 and 3 rows: an empty part and a one-row part too.
  const std::vector<std::int64_t> bounds{0, 7, 7, 8, 20, 23};
  const std::vector<double> v = Tensor::randn(Shape{23, c}, kSeed + 60, syncbn::DType::Float64,
                                              syncbn::Device::cpu(0), center, 2.0)
                                    .to_vector<double>();
  HostMoments merged;
  for (std::size_t k = 0; k + 1 < bounds.size(); ++k) {
    const Part part = moments_of(v, bounds[k], bounds[k + 1], c);
    merged.merge(part.count, part.mean, part.m2);
  }
  const Part want = moments_of(v, 0, 23, c);
  REQUIRE(merged.count == 23);
  for (std::size_t j = 0; j < static_cast<std::size_t>(c); ++j) {
    CHECK_THAT(merged.mean[j], Catch::Matchers::WithinRel(want.mean[j], 1e-14) || Catch::Matchers::WithinAbs(want.mean[j], 1e-12));
    CHECK_THAT(merged.m2[j], Catch::Matchers::WithinRel(want.m2[j], 1e-12) || Catch::Matchers::WithinAbs(want.m2[j], 1e-12));
  }
}

TEST_CASE("HostMoments takes a first part's own bits and ignores empty parts", "[batchnorm][merge]") {
  HostMoments merged;
  const std::vector<double> mean{0.1, -3.7e5}, m2{2.25, 1e-30};
  merged.merge(0, std::vector<double>{9.0, 9.0}, std::vector<double>{9.0, 9.0});
  merged.merge(3, mean, m2);
  CHECK(merged.count == 3);
  CHECK(merged.mean == mean);
  CHECK(merged.m2 == m2);
}

TEST_CASE("HostMoments refuses a negative count or mismatched channels and keeps what it had", "[batchnorm][merge]") {
  HostMoments merged;
  merged.merge(2, std::vector<double>{1.0, 2.0}, std::vector<double>{0.5, 0.5});
  const HostMoments before = merged;
  CHECK_THROWS_MATCHES(merged.merge(-1, std::vector<double>{1.0, 2.0}, std::vector<double>{0.0, 0.0}),
                       InvalidArgument, MessageIs("HostMoments::merge: count -1, expected >= 0"));
  CHECK_THROWS_MATCHES(merged.merge(2, std::vector<double>{1.0, 2.0, 3.0}, std::vector<double>{0.0, 0.0, 0.0}),
                       InvalidArgument, MessageIs("HostMoments::merge: a part of 3 channels, expected 2"));
  CHECK_THROWS_MATCHES(merged.merge(2, std::vector<double>{1.0, 2.0}, std::vector<double>{0.0}), InvalidArgument,
                       MessageIs("HostMoments::merge: 2 means and 1 M2 values, expected as many of each"));
  CHECK(merged.count == before.count);
  CHECK(merged.mean == before.mean);
  CHECK(merged.m2 == before.m2);
}
