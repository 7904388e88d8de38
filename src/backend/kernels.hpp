#pragma once
// The operation tables of the backends: one table per kernel family,
// chosen at run time by device kind (see Note [Backend tables]).
//
// Note [Backend tables]
// Every kernel family is a struct of function pointers. The CPU backend
// always provides one (src/cpu/), the CUDA backend where it was built
// (src/cuda/). The public entry points (Tensor, ops, collectives, layers)
// validate their arguments, then call `<family>_kernels(device.kind())`.
// Asking for the CUDA table in a build without CUDA throws Unsupported.
// The CPU entry of each kernel is its specification: CUDA kernels are tested
// against it. Pointers are raw element pointers of the given dtype; counts
// are elements. CUDA entries enqueue on the device's stream and return
// without waiting, unless their comment says otherwise.

#include <cstddef>
#include <cstdint>

#include "syncbn/device.hpp"
#include "syncbn/dtype.hpp"

namespace syncbn::detail {

/// Allocation, copies, fills and conversions.
struct MemoryKernels {
  /// Allocates `nbytes` (> 0) on `device`; throws on failure.
  void* (*allocate)(Device device, std::size_t nbytes);
  /// Releases memory from allocate() of `nbytes`; never throws.
  void (*release)(Device device, void* ptr, std::size_t nbytes) noexcept;
  /// Copies `nbytes` from `src` on `src_device` to `dst` on `dst_device`.
  /// The CUDA table handles every pair that involves a GPU.
  void (*copy)(void* dst, Device dst_device, const void* src, Device src_device, std::size_t nbytes);
  /// Sets n elements of `dtype` to `value` (rounded to dtype).
  void (*fill)(Device device, void* dst, DType dtype, std::int64_t n, double value);
  /// Converts n elements from `src_dtype` to `dst_dtype` (round to nearest even).
  void (*convert)(Device device, void* dst, DType dst_dtype, const void* src, DType src_dtype, std::int64_t n);
  /// Waits until the device's queued work is done (CPU: no-op).
  void (*synchronize)(Device device);
};

/// Element-wise binary operators.
enum class BinaryOp : std::uint8_t { Add, Sub, Mul };

/// Element-wise arithmetic (float32 / float64).
struct ElementwiseKernels {
  /// out[i] = a[i] op b[i]; out may alias a or b.
  void (*binary)(Device device, BinaryOp op, DType dtype, std::int64_t n, const void* a, const void* b, void* out);
  /// y[i] = alpha * x[i] + beta * y[i].
  void (*axpby)(Device device, DType dtype, std::int64_t n, double alpha, const void* x, double beta, void* y);
  /// x[i] = alpha * x[i].
  void (*scale)(Device device, DType dtype, std::int64_t n, double alpha, void* x);
};

/// Reductions, accumulated in float64 whatever the dtype.
struct ReduceKernels {
  /// out[0] = sum of x[0..n).
  void (*sum_all)(Device device, DType dtype, std::int64_t n, const void* x, void* out);
  /// out[j] = sum over i of x[i * cols + j], for a rows x cols matrix.
  void (*sum_rows)(Device device, DType dtype, std::int64_t rows, std::int64_t cols, const void* x, void* out);
  /// out[i] = srcs[0][i] + srcs[1][i] + ... in that order, for `count`
  /// (<= kMaxSumSources) sources on `device`; out may alias srcs[0].
  void (*sum_many)(Device device, DType dtype, std::int64_t n, const void* const* srcs, int count, void* out);
};

/// The most sources one sum_many call takes (a CUDA kernel takes the
/// pointers by value).
inline constexpr int kMaxSumSources = 64;

/// The tables of a device kind. Throw Unsupported for CUDA in a build without CUDA.
const MemoryKernels& memory_kernels(DeviceKind kind);
const ElementwiseKernels& elementwise_kernels(DeviceKind kind);
const ReduceKernels& reduce_kernels(DeviceKind kind);

/// The memory table that copies between these two devices (CUDA whenever
/// either is a GPU).
const MemoryKernels& copy_kernels(Device dst, Device src);

}  // namespace syncbn::detail
