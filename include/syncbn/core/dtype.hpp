#pragma once
// Element types of syncbn tensors.

#include <cstddef>
#include <cstdint>
#include <ostream>

namespace syncbn::core {

/// Element type of a tensor. Float32 and Float64 support every operation;
/// Float16 and BFloat16 are storage types (conversion, copies, fills and the
/// mixed-precision batch-norm input); Int64 holds labels and counters.
enum class DType : std::uint8_t { Float32, Float64, Float16, BFloat16, Int64 };

/// Bytes per element.
constexpr std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Float16: return 2;
    case DType::BFloat16: return 2;
    case DType::Int64: return 8;
  }
  return 0;
}

/// "float32", "float64", "float16", "bfloat16" or "int64".
const char* dtype_name(DType t) noexcept;

/// True for the floating-point types.
constexpr bool is_floating(DType t) noexcept { return t != DType::Int64; }

/// Float16 and BFloat16: storage-only types in most operations.
constexpr bool is_reduced_precision(DType t) noexcept { return t == DType::Float16 || t == DType::BFloat16; }

inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

/// The DType of a C++ element type (float, double, std::int64_t).
template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::Float32; }
template <>
constexpr DType dtype_of<double>() { return DType::Float64; }
template <>
constexpr DType dtype_of<std::int64_t>() { return DType::Int64; }

}  // namespace syncbn::core

// The vocabulary types are used everywhere: syncbn::DType names them too.
namespace syncbn {
using core::DType;
}  // namespace syncbn
