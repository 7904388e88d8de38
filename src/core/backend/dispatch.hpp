#pragma once
// Calls a generic lambda with the C++ type of a dtype.

#include <cstdint>
#include <type_traits>

#include "syncbn/core/dtype.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core::detail {

/// Calls fn(T{}) with T = float or double for Float32 / Float64; throws
/// InvalidArgument naming `op` for any other dtype.
template <class Fn>
decltype(auto) dispatch_floating(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float64: return fn(double{});
    default: break;
  }
  SYNCBN_THROW(InvalidArgument, op, ": dtype ", dtype_name(dtype), " is not supported, expected float32 or float64");
}

}  // namespace syncbn::core::detail
