// CPU backend: dense matrix products (the specification of the CUDA GEMM).
//
// Note [CPU GEMM]
// C += alpha * A * B for row-major A (m x k), B (k x n) is computed in tiles
// of kRows rows x kCols columns of C (6 x 2 vectors of 32 bytes: 16 floats or
// 8 doubles), whose 12 vector accumulators stay in registers while p runs over
// a block of kDepth values of k (the B panel of the block stays in L1). The
// full tile uses GCC/Clang vector types so that the accumulators cannot spill
// (plain arrays did, at 5 GFLOP/s). Every element of C sums its k products in
// the same order (blocks of kDepth in increasing k, one fused multiply-add
// per product into one accumulator), whichever tile or edge path computes it,
// so a row of the result does not depend on how many rows the batch has: a
// batch split across replicas gives bit-identical rows. Transposed operands
// are first copied into contiguous form.

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend/dispatch.hpp"
#include "cpu/cpu_kernels.hpp"
#include "cpu/simd.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

constexpr std::int64_t kRows = 6;
constexpr std::int64_t kDepth = 256;

template <class T>
constexpr std::int64_t kCols = 2 * kLanes<T>;

// One full tile: C[0..kRows)[0..kCols) += alpha * A[0..kRows)[0..depth) * B[0..depth)[0..kCols).
template <class T>
void tile_full(std::int64_t depth, T alpha, const T* __restrict a, std::int64_t lda, const T* __restrict b,
               std::int64_t ldb, T* __restrict c, std::int64_t ldc) {
  constexpr std::int64_t lanes = kLanes<T>;
  Vec<T> lo[kRows] = {}, hi[kRows] = {};
  for (std::int64_t p = 0; p < depth; ++p) {
    const Vec<T> b0 = load<T>(b + p * ldb);
    const Vec<T> b1 = load<T>(b + p * ldb + lanes);
    for (std::int64_t r = 0; r < kRows; ++r) {
      const Vec<T> av = splat<T>(a[r * lda + p]);
      lo[r] += av * b0;
      hi[r] += av * b1;
    }
  }
  for (std::int64_t r = 0; r < kRows; ++r) {
    store<T>(c + r * ldc, load<T>(c + r * ldc) + alpha * lo[r]);
    store<T>(c + r * ldc + lanes, load<T>(c + r * ldc + lanes) + alpha * hi[r]);
  }
}

// A partial tile (rows < kRows or cols < kCols): the same summation order.
template <class T>
void tile_edge(std::int64_t rows, std::int64_t cols, std::int64_t depth, T alpha, const T* a, std::int64_t lda,
               const T* b, std::int64_t ldb, T* c, std::int64_t ldc) {
  T acc[kRows][kCols<T>] = {};
  for (std::int64_t p = 0; p < depth; ++p)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T av = a[r * lda + p];
      for (std::int64_t j = 0; j < cols; ++j) acc[r][j] += av * b[p * ldb + j];
    }
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) c[r * ldc + j] += alpha * acc[r][j];
}

// C += alpha * A * B, all contiguous row-major.
template <class T>
void gemm_nn(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, const T* b, T* c) {
  constexpr std::int64_t cols = kCols<T>;
  for (std::int64_t k0 = 0; k0 < k; k0 += kDepth) {
    const std::int64_t depth = std::min(kDepth, k - k0);
    for (std::int64_t j0 = 0; j0 < n; j0 += cols) {
      const std::int64_t nc = std::min(cols, n - j0);
      for (std::int64_t i0 = 0; i0 < m; i0 += kRows) {
        const std::int64_t mr = std::min(kRows, m - i0);
        const T* ap = a + i0 * k + k0;
        const T* bp = b + k0 * n + j0;
        T* cp = c + i0 * n + j0;
        if (mr == kRows && nc == cols) tile_full(depth, alpha, ap, k, bp, n, cp, n);
        else tile_edge(mr, nc, depth, alpha, ap, k, bp, n, cp, n);
      }
    }
  }
}

// out (cols x rows) = transpose of in (rows x cols), in cache-sized blocks.
template <class T>
std::vector<T> transposed(const T* in, std::int64_t rows, std::int64_t cols) {
  std::vector<T> out(static_cast<std::size_t>(rows * cols));
  constexpr std::int64_t kBlock = 32;
  for (std::int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (std::int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (std::int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r)
        for (std::int64_t j = c0; j < std::min(cols, c0 + kBlock); ++j)
          out[static_cast<std::size_t>(j * rows + r)] = in[r * cols + j];
  return out;
}

void cpu_gemm(Device /*device*/, DType dtype, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
              std::int64_t k, double alpha, const void* a, const void* b, double beta, void* c) {
  core::detail::dispatch_floating(dtype, "gemm", [&](auto tag) {
    using T = decltype(tag);
    T* cs = static_cast<T*>(c);
    const std::int64_t size = m * n;
    if (beta == 0.0) std::fill(cs, cs + size, T(0));
    else if (beta != 1.0)
      for (std::int64_t i = 0; i < size; ++i) cs[i] *= static_cast<T>(beta);
    if (m == 0 || n == 0 || k == 0) return;
    std::vector<T> at, bt;
    const T* as = static_cast<const T*>(a);
    const T* bs = static_cast<const T*>(b);
    if (trans_a) {
      at = transposed(as, k, m);
      as = at.data();
    }
    if (trans_b) {
      bt = transposed(bs, n, k);
      bs = bt.data();
    }
    gemm_nn(m, n, k, static_cast<T>(alpha), as, bs, cs);
  });
}

}  // namespace

const core::detail::BlasKernels kBlasKernels{cpu_gemm};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
