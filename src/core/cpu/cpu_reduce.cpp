// CPU backend: reductions, accumulated in float64 (the specification of the
// CUDA kernels).

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include <cstdint>
#include <vector>

#include "backend/dispatch.hpp"
#include "cpu/cpu_kernels.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

// Block helpers with restrict-qualified pointers: without them GCC cannot
// prove that the float64 accumulators and the sources do not alias, and
// leaves the loops scalar.
template <class T>
void load_block(double* __restrict acc, const T* __restrict src, std::int64_t len) {
  for (std::int64_t i = 0; i < len; ++i) acc[i] = static_cast<double>(src[i]);
}

template <class T>
void add_block(double* __restrict acc, const T* __restrict src, std::int64_t len) {
  for (std::int64_t i = 0; i < len; ++i) acc[i] += static_cast<double>(src[i]);
}

template <class T>
void store_block(T* __restrict dst, const double* __restrict acc, std::int64_t len) {
  for (std::int64_t i = 0; i < len; ++i) dst[i] = static_cast<T>(acc[i]);
}

void cpu_sum_all(Device /*device*/, DType dtype, std::int64_t n, const void* x, void* out) {
  core::detail::dispatch_floating(dtype, "sum", [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    // Four independent accumulators let the loop pipeline; still float64.
    double acc[4] = {0, 0, 0, 0};
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      acc[0] += xs[i];
      acc[1] += xs[i + 1];
      acc[2] += xs[i + 2];
      acc[3] += xs[i + 3];
    }
    for (; i < n; ++i) acc[0] += xs[i];
    *static_cast<T*>(out) = static_cast<T>((acc[0] + acc[1]) + (acc[2] + acc[3]));
  });
}

void cpu_sum_rows(Device /*device*/, DType dtype, std::int64_t rows, std::int64_t cols, const void* x, void* out) {
  core::detail::dispatch_floating(dtype, "sum_rows", [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    std::vector<double> acc(static_cast<std::size_t>(cols), 0.0);
    for (std::int64_t r = 0; r < rows; ++r) add_block(acc.data(), xs + r * cols, cols);
    store_block(static_cast<T*>(out), acc.data(), cols);
  });
}

void cpu_sum_many(Device /*device*/, DType dtype, std::int64_t n, const void* const* srcs, int count, void* out) {
  core::detail::dispatch_floating(dtype, "sum_many", [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    // Blocks keep the float64 partial sums in cache while every source is
    // added in order.
    constexpr std::int64_t kBlock = 1024;
    double acc[kBlock];
    for (std::int64_t begin = 0; begin < n; begin += kBlock) {
      const std::int64_t len = n - begin < kBlock ? n - begin : kBlock;
      load_block(acc, static_cast<const T*>(srcs[0]) + begin, len);
      for (int k = 1; k < count; ++k) add_block(acc, static_cast<const T*>(srcs[k]) + begin, len);
      // out may alias srcs[0]: this block of srcs[0] was read above.
      store_block(o + begin, acc, len);
    }
  });
}

}  // namespace

const core::detail::ReduceKernels kReduceKernels{cpu_sum_all, cpu_sum_rows, cpu_sum_many};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
