#pragma once
// The CBLAS this build found (cmake/SyncbnBlas.cmake), behind one entry that
// the convolutions and, by default, the matrix products call (cpu_blas.cpp;
// compiled once, not per CPU level: the BLAS dispatches on the CPU itself).

#include <cstdint>

#include "syncbn/core/dtype.hpp"

namespace syncbn::cpu {

/// C = alpha * op(A) * op(B) + beta * C for row-major operands with leading
/// dimensions lda, ldb, ldc (float32 / float64). Throws Unsupported, naming
/// `op` and the package to install, in a build without a BLAS.
void blas_gemm(const char* op, DType dtype, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
               std::int64_t k, double alpha, const void* a, std::int64_t lda, const void* b, std::int64_t ldb,
               double beta, void* c, std::int64_t ldc);

}  // namespace syncbn::cpu
