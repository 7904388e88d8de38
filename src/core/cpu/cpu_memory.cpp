// CPU backend: host allocations, copies, fills and dtype conversions.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernel_set.hpp"
#include "cpu/half_float.hpp"
#include "cpu/host_block_cache.hpp"
#include "cpu/small_block_cache.hpp"
#include "syncbn/error.hpp"

namespace syncbn::cpu {
namespace {

// Small blocks from the thread's cache (Note [Small block cache]), large
// ones from the process's (Note [Host block cache]).
static_assert(SmallBlockCache::kMaxBytes == HostBlockCache::kMinCachedBytes);
void* cpu_allocate(Device /*device*/, std::size_t nbytes) {
  if (nbytes > 0 && nbytes < SmallBlockCache::kMaxBytes) return small_allocate(nbytes);
  return host_block_cache().allocate(nbytes);
}

void cpu_release(Device /*device*/, void* ptr, std::size_t nbytes) noexcept {
  if (ptr == nullptr) return;
  if (nbytes > 0 && nbytes < SmallBlockCache::kMaxBytes) {
    small_release(ptr, nbytes);
    return;
  }
  host_block_cache().release(ptr, nbytes);
}

void cpu_copy(void* dst, Device /*dst_device*/, const void* src, Device /*src_device*/, std::size_t nbytes) {
  if (nbytes > 0 && dst != src) std::memmove(dst, src, nbytes);
}

// float64 to int64, saturating: NaN gives 0 and values beyond the range its
// ends (the plain conversion is undefined behaviour for those).
std::int64_t to_int64(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 9223372036854775807.0) return INT64_MAX;
  if (v <= -9223372036854775808.0) return INT64_MIN;
  return static_cast<std::int64_t>(v);
}

// Element load/store through float or double for every dtype.
double load(const void* p, DType t, std::int64_t i) {
  switch (t) {
    case DType::Float32: return static_cast<const float*>(p)[i];
    case DType::Float64: return static_cast<const double*>(p)[i];
    case DType::Float16: return half_to_float(static_cast<const std::uint16_t*>(p)[i]);
    case DType::BFloat16: return bfloat16_to_float(static_cast<const std::uint16_t*>(p)[i]);
    case DType::Int64: return static_cast<double>(static_cast<const std::int64_t*>(p)[i]);
  }
  return 0;
}

void store(void* p, DType t, std::int64_t i, double v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::Float64: static_cast<double*>(p)[i] = v; break;
    case DType::Float16: static_cast<std::uint16_t*>(p)[i] = float_to_half(static_cast<float>(v)); break;
    case DType::BFloat16: static_cast<std::uint16_t*>(p)[i] = float_to_bfloat16(static_cast<float>(v)); break;
    case DType::Int64: static_cast<std::int64_t*>(p)[i] = to_int64(v); break;
  }
}

template <class T>
void fill_typed(T* dst, std::int64_t n, T value) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = value;
}

void cpu_fill(Device /*device*/, void* dst, DType dtype, std::int64_t n, double value) {
  switch (dtype) {
    case DType::Float32: fill_typed(static_cast<float*>(dst), n, static_cast<float>(value)); return;
    case DType::Float64: fill_typed(static_cast<double*>(dst), n, value); return;
    case DType::Int64: fill_typed(static_cast<std::int64_t*>(dst), n, to_int64(value)); return;
    case DType::Float16:
      fill_typed(static_cast<std::uint16_t*>(dst), n, float_to_half(static_cast<float>(value)));
      return;
    case DType::BFloat16:
      fill_typed(static_cast<std::uint16_t*>(dst), n, float_to_bfloat16(static_cast<float>(value)));
      return;
  }
}

void cpu_convert(Device /*device*/, void* dst, DType dst_dtype, const void* src, DType src_dtype, std::int64_t n) {
  if (dst_dtype == src_dtype) {
    cpu_copy(dst, Device(), src, Device(), static_cast<std::size_t>(n) * dtype_size(dst_dtype));
    return;
  }
  // The common mixed-precision pairs get direct loops; the rest go through double.
  if (src_dtype == DType::Float32 && dst_dtype == DType::Float64) {
    const auto* s = static_cast<const float*>(src);
    auto* d = static_cast<double*>(dst);
    for (std::int64_t i = 0; i < n; ++i) d[i] = s[i];
    return;
  }
  if (src_dtype == DType::Float64 && dst_dtype == DType::Float32) {
    const auto* s = static_cast<const double*>(src);
    auto* d = static_cast<float*>(dst);
    for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
    return;
  }
  // float64 -> half/bf16 rounds twice (to float, then to 16 bits), exactly as
  // the CUDA backend does, so both backends agree bit for bit.
  for (std::int64_t i = 0; i < n; ++i) store(dst, dst_dtype, i, load(src, src_dtype, i));
}

// Blocked so that both the rows read and the rows written stay in cache:
// a 32 x 32 tile of 4-byte elements is 4 KiB each way.
template <class E>
void transpose_typed(std::int64_t batches, std::int64_t rows, std::int64_t cols, const E* src, E* dst) {
  constexpr std::int64_t kTile = 32;
  for (std::int64_t b = 0; b < batches; ++b) {
    const E* s = src + b * rows * cols;
    E* d = dst + b * rows * cols;
    for (std::int64_t i0 = 0; i0 < rows; i0 += kTile)
      for (std::int64_t j0 = 0; j0 < cols; j0 += kTile) {
        const std::int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
        for (std::int64_t j = j0; j < j1; ++j)
          for (std::int64_t i = i0; i < i1; ++i) d[j * rows + i] = s[i * cols + j];
      }
  }
}

void cpu_transpose(Device /*device*/, std::size_t element_size, std::int64_t batches, std::int64_t rows,
                   std::int64_t cols, const void* src, void* dst) {
  switch (element_size) {
    case 2:
      transpose_typed(batches, rows, cols, static_cast<const std::uint16_t*>(src), static_cast<std::uint16_t*>(dst));
      return;
    case 4:
      transpose_typed(batches, rows, cols, static_cast<const std::uint32_t*>(src), static_cast<std::uint32_t*>(dst));
      return;
    case 8:
      transpose_typed(batches, rows, cols, static_cast<const std::uint64_t*>(src), static_cast<std::uint64_t*>(dst));
      return;
    default: break;
  }
  SYNCBN_THROW(InvalidArgument, "transpose: element size ", element_size, " bytes, expected 2, 4 or 8");
}

void cpu_synchronize(Device /*device*/) {}

}  // namespace

const core::detail::MemoryKernels kMemoryKernels{cpu_allocate, cpu_release, cpu_copy, cpu_fill, cpu_convert, cpu_transpose,
                                                 cpu_synchronize};

}  // namespace syncbn::cpu
