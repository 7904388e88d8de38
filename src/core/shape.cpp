// Shape: validation, element counts and printing.

#include "syncbn/core/shape.hpp"

#include <cstdint>
#include <string>

#include "syncbn/error.hpp"

namespace syncbn::core {

Shape::Shape(std::initializer_list<std::int64_t> dims) { assign(dims.begin(), dims.size()); }

Shape::Shape(const std::vector<std::int64_t>& dims) { assign(dims.data(), dims.size()); }

void Shape::assign(const std::int64_t* dims, std::size_t rank) {
  SYNCBN_CHECK(rank <= static_cast<std::size_t>(kMaxRank), "Shape: rank ", rank, " is too large, expected at most ",
               kMaxRank);
  bool has_zero = false;
  for (std::size_t i = 0; i < rank; ++i) {
    SYNCBN_CHECK(dims[i] >= 0, "Shape: dimension ", i, " is ", dims[i], ", expected >= 0");
    has_zero = has_zero || dims[i] == 0;
  }
  // The element count must fit int64 (an empty shape has none, whatever its
  // other dimensions).
  std::int64_t count = 1;
  for (std::size_t i = 0; i < rank && !has_zero; ++i) {
    SYNCBN_CHECK(!__builtin_mul_overflow(count, dims[i], &count), "Shape: dimensions ",
                 [&] {
                   std::string out;
                   for (std::size_t j = 0; j < rank; ++j) out += (j > 0 ? ", " : "") + std::to_string(dims[j]);
                   return out;
                 }(),
                 " have more elements than int64 can count, expected a product of at most ", INT64_MAX);
  }
  for (std::size_t i = 0; i < rank; ++i) dims_[i] = dims[i];
  rank_ = static_cast<int>(rank);
}

std::int64_t Shape::operator[](int i) const {
  const int j = i < 0 ? i + rank_ : i;
  SYNCBN_CHECK(j >= 0 && j < rank_, "Shape: dimension index ", i, " is out of range for rank ", rank_,
               ", expected ", -rank_, " to ", rank_ - 1);
  return dims_[static_cast<std::size_t>(j)];
}

std::int64_t Shape::numel() const noexcept {
  std::int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
  return n;
}

Shape Shape::with_rows(std::int64_t rows) const {
  SYNCBN_CHECK(rank_ >= 1, "Shape::with_rows: the shape is a scalar's, expected rank >= 1 (rows to replace)");
  SYNCBN_CHECK(rows >= 0, "Shape: rows is ", rows, ", expected >= 0");
  Shape out = *this;
  out.dims_[0] = rows;
  return out;
}

std::string Shape::str() const {
  std::string out = "(";
  for (int i = 0; i < rank_; ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(dims_[static_cast<std::size_t>(i)]);
  }
  return out + ")";
}

}  // namespace syncbn::core
