#pragma once
// Shape: the dimensions of a tensor, rank 0 (a scalar) to 5.

#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <vector>

namespace syncbn::core {

/// Dimensions of a tensor, outermost first (row-major). Rank 0 is a scalar
/// with one element. Dimensions are >= 0; a zero dimension gives an empty tensor.
class Shape {
 public:
  /// The largest supported rank.
  static constexpr int kMaxRank = 5;

  /// A scalar (rank 0).
  Shape() = default;
  /// Throws InvalidArgument for rank > 5 or a negative dimension.
  Shape(std::initializer_list<std::int64_t> dims);
  /// Throws InvalidArgument for rank > 5 or a negative dimension.
  explicit Shape(const std::vector<std::int64_t>& dims);

  int rank() const noexcept { return rank_; }
  /// Dimension i; negative i counts from the end. Throws InvalidArgument when out of range.
  std::int64_t operator[](int i) const;
  /// Product of the dimensions (1 for a scalar).
  std::int64_t numel() const noexcept;
  /// The dimensions as a vector.
  std::vector<std::int64_t> dims() const { return {dims_.begin(), dims_.begin() + rank_}; }
  /// This shape with dimension 0 replaced by `rows` (rank >= 1).
  Shape with_rows(std::int64_t rows) const;
  /// "(2, 3, 4)"; a scalar prints "()".
  std::string str() const;

  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.dims_[static_cast<std::size_t>(i)] != b.dims_[static_cast<std::size_t>(i)]) return false;
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

 private:
  void assign(const std::int64_t* dims, std::size_t rank);
  std::array<std::int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

}  // namespace syncbn::core

// The vocabulary types are used everywhere: syncbn::Shape names them too.
namespace syncbn {
using core::Shape;
}  // namespace syncbn
