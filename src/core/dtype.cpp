// Names of the element types.

#include "syncbn/core/dtype.hpp"

namespace syncbn::core {

const char* dtype_name(DType t) noexcept {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
  }
  return "unknown";
}

}  // namespace syncbn::core
