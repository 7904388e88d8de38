// Shape: ranks 0..5, element counts and errors.

#include <catch2/catch.hpp>

#include <cstdint>

#include "support/matchers.hpp"
#include "syncbn/error.hpp"
#include "syncbn/core/shape.hpp"

using syncbn::InvalidArgument;
using syncbn::Shape;
using syncbn::testing::MessageIs;

TEST_CASE("A shape knows its rank, dimensions and element count", "[tensor]") {
  const Shape s{2, 3, 4};
  CHECK(s.rank() == 3);
  CHECK(s[0] == 2);
  CHECK(s[-1] == 4);
  CHECK(s.numel() == 24);
  CHECK(s.str() == "(2, 3, 4)");
  CHECK(Shape{}.numel() == 1);
  CHECK(Shape{}.str() == "()");
  CHECK(Shape{5, 0, 3}.numel() == 0);
  CHECK(Shape{1, 2, 3, 4, 5}.rank() == 5);
  CHECK(s.with_rows(7) == Shape{7, 3, 4});
  CHECK(Shape{2, 3} != Shape{3, 2});
}

TEST_CASE("Shapes of rank above 5 or with negative dimensions are rejected", "[tensor]") {
  CHECK_THROWS_MATCHES((Shape{1, 2, 3, 4, 5, 6}), InvalidArgument,
                       MessageIs("Shape: rank 6 is too large, expected at most 5"));
  CHECK_THROWS_MATCHES((Shape{2, -1}), InvalidArgument, MessageIs("Shape: dimension 1 is -1, expected >= 0"));
  CHECK_THROWS_MATCHES((Shape{2, 3}[2]), InvalidArgument,
                       MessageIs("Shape: dimension index 2 is out of range for rank 2, expected -2 to 1"));
  CHECK_THROWS_AS(Shape{}.with_rows(1), InvalidArgument);
}

TEST_CASE("Shapes whose element count overflows int64 are rejected", "[tensor]") {
  CHECK_THROWS_MATCHES((Shape{std::int64_t{1} << 32, std::int64_t{1} << 32}), InvalidArgument,
                       MessageIs("Shape: dimensions 4294967296, 4294967296 have more elements than int64 can count, "
                                 "expected a product of at most 9223372036854775807"));
  CHECK((Shape{std::int64_t{1} << 62, 0, std::int64_t{1} << 62}).numel() == 0);  // empty: nothing to count
  CHECK((Shape{std::int64_t{1} << 62}).numel() == std::int64_t{1} << 62);
}

TEST_CASE("with_rows on a scalar's shape names the call and what it expects", "[tensor]") {
  CHECK_THROWS_MATCHES(Shape{}.with_rows(1), InvalidArgument,
                       MessageIs("Shape::with_rows: the shape is a scalar's, expected rank >= 1 (rows to replace)"));
}
