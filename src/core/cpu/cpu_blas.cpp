// CPU backend: the CBLAS this build found, its threads, and the choice of
// engine for the matrix products behind matmul_ and Linear (Note [CPU GEMM
// engines]). Compiled once, not per CPU level: the BLAS dispatches on the
// CPU itself.
//
// Note [CPU GEMM engines]
// matmul_ runs on the BLAS where the build has one: OpenBLAS's kernels are
// 1.15 to 14 times faster than syncbn's own GEMM on Linear's products
// (docs/performance.md, "Convolutional networks on the CPU"). syncbn's GEMM
// (Note [CPU GEMM] in cpu_gemm.cpp, one per CPU level) stays: it is the
// engine of a build without a BLAS, and of products whose sizes do not fit
// CBLAS's int arguments. What the BLAS does not promise is the own GEMM's
// order of summation per element whatever the other sizes: a batch split
// across replicas may give rows that differ in the last bits from those of
// the whole batch on one device (within the float rounding of a k-term sum).
// set_gemm_engine selects an engine for the whole process, for tests and to
// compare the two.

#include <atomic>
#include <climits>
#include <cstdint>

#include "backend/dispatch.hpp"
#include "backend/kernels.hpp"
#include "cpu/blas.hpp"
#include "cpu/kernel_set.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/error.hpp"

#if SYNCBN_WITH_BLAS
#include <cblas.h>
#endif

// OpenBLAS's thread controls, weak: a build on another CBLAS has none, and
// then the BLAS's threads cannot be told from here.
extern "C" void openblas_set_num_threads(int threads) __attribute__((weak));
extern "C" int openblas_get_num_threads() __attribute__((weak));

namespace syncbn::cpu {
namespace {

std::atomic<GemmEngine> g_engine{SYNCBN_WITH_BLAS ? GemmEngine::Blas : GemmEngine::Builtin};

bool fits_int(std::int64_t v) { return v <= INT_MAX; }

void matmul_gemm(Device device, DType dtype, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                 std::int64_t k, double alpha, const void* a, const void* b, double beta, void* c) {
  const bool blas = g_engine.load(std::memory_order_relaxed) == GemmEngine::Blas && fits_int(m) && fits_int(n) &&
                    fits_int(k) && fits_int(m * k) && fits_int(k * n);
  // Empty products go to the own GEMM, which scales C by beta without reading
  // it when beta == 0 (it may hold NaN); CBLAS implementations differ there.
  if (!blas || m == 0 || n == 0 || k == 0) {
    active_kernel_set().blas->gemm(device, dtype, trans_a, trans_b, m, n, k, alpha, a, b, beta, c);
    return;
  }
  blas_gemm("gemm", dtype, trans_a, trans_b, m, n, k, alpha, a, trans_a ? m : k, b, trans_b ? k : n, beta, c, n);
}

}  // namespace

void blas_gemm([[maybe_unused]] const char* op, DType dtype, [[maybe_unused]] bool trans_a,
               [[maybe_unused]] bool trans_b, [[maybe_unused]] std::int64_t m, [[maybe_unused]] std::int64_t n,
               [[maybe_unused]] std::int64_t k, [[maybe_unused]] double alpha, [[maybe_unused]] const void* a,
               [[maybe_unused]] std::int64_t lda, [[maybe_unused]] const void* b, [[maybe_unused]] std::int64_t ldb,
               [[maybe_unused]] double beta, [[maybe_unused]] void* c, [[maybe_unused]] std::int64_t ldc) {
#if SYNCBN_WITH_BLAS
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  const auto i = [](std::int64_t v) { return static_cast<int>(v); };
  if (dtype == DType::Float32)
    cblas_sgemm(CblasRowMajor, ta, tb, i(m), i(n), i(k), static_cast<float>(alpha), static_cast<const float*>(a),
                i(lda), static_cast<const float*>(b), i(ldb), static_cast<float>(beta), static_cast<float*>(c), i(ldc));
  else if (dtype == DType::Float64)
    cblas_dgemm(CblasRowMajor, ta, tb, i(m), i(n), i(k), alpha, static_cast<const double*>(a), i(lda),
                static_cast<const double*>(b), i(ldb), beta, static_cast<double*>(c), i(ldc));
  else
    core::detail::throw_unsupported_dtype(dtype, op);
#else
  (void)dtype;
  SYNCBN_THROW(Unsupported, op, ": this build of syncbn has no BLAS for CPU convolutions, expected one "
                                "(install a CBLAS such as Debian's libopenblas-dev and reconfigure)");
#endif
}

bool has_blas() noexcept { return SYNCBN_WITH_BLAS != 0; }

int blas_threads() noexcept {
  if (!has_blas() || openblas_get_num_threads == nullptr) return 0;
  return openblas_get_num_threads();
}

bool set_blas_threads(int threads) {
  SYNCBN_CHECK(threads >= 1, "cpu::set_blas_threads: threads ", threads, ", expected >= 1");
  if (!has_blas() || openblas_set_num_threads == nullptr) return false;
  openblas_set_num_threads(threads);
  return true;
}

std::string_view gemm_engine_name(GemmEngine engine) noexcept {
  return engine == GemmEngine::Blas ? "blas" : "builtin";
}

GemmEngine gemm_engine() noexcept { return g_engine.load(std::memory_order_relaxed); }

void set_gemm_engine(GemmEngine engine) {
  SYNCBN_CHECK(engine == GemmEngine::Blas || engine == GemmEngine::Builtin, "cpu::set_gemm_engine: engine ",
               static_cast<int>(engine), ", expected GemmEngine::Blas or GemmEngine::Builtin");
  if (engine == GemmEngine::Blas && !has_blas())
    SYNCBN_THROW(Unsupported, "cpu::set_gemm_engine: engine blas, expected builtin: this build of syncbn has no "
                              "BLAS (install a CBLAS such as Debian's libopenblas-dev and reconfigure)");
  g_engine.store(engine, std::memory_order_relaxed);
}

const core::detail::BlasKernels kMatmulKernels{matmul_gemm};

}  // namespace syncbn::cpu
