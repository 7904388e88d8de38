#pragma once
// Calls a generic lambda with the C++ type of a dtype.

#include <cstdint>
#include <type_traits>

#include "syncbn/core/dtype.hpp"

namespace syncbn::core::detail {

/// Throws InvalidArgument: `op` does not take `dtype`, expected float32 or
/// float64. Compiled once (not inline), so that the CPU kernels, compiled
/// once per level, share no error-formatting code (Note [CPU dispatch]).
[[noreturn]] void throw_unsupported_dtype(DType dtype, const char* op);

/// Calls fn(T{}) with T = float or double for Float32 / Float64; throws
/// InvalidArgument naming `op` for any other dtype.
template <class Fn>
decltype(auto) dispatch_floating(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float64: return fn(double{});
    default: break;
  }
  throw_unsupported_dtype(dtype, op);
}

}  // namespace syncbn::core::detail
