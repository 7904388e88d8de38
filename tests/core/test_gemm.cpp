// The matrix products behind matmul_ and Linear against a float64 reference,
// on each CPU engine this build has (Note [CPU GEMM engines] in
// src/core/cpu/cpu_blas.cpp): the BLAS and syncbn's own GEMM, whose tiles
// (6 rows, two vectors of columns, blocks of 256 along k) the sizes below
// cross and leave ragged. The CPU binaries run it at every CPU level; the
// CUDA binary runs it once on cuda:0 (cuBLAS).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/random_values.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/core/tensor.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using syncbn::testing::device_tensor;
using syncbn::testing::kSeed;
using syncbn::testing::MessageIs;
using syncbn::testing::normal_values;
using syncbn::testing::test_device;

namespace {

// Selects a CPU GEMM engine for one test and restores the previous one.
class ScopedGemmEngine {
 public:
  explicit ScopedGemmEngine(cpu::GemmEngine engine) : before_(cpu::gemm_engine()) { cpu::set_gemm_engine(engine); }
  ~ScopedGemmEngine() { cpu::set_gemm_engine(before_); }
  ScopedGemmEngine(const ScopedGemmEngine&) = delete;
  ScopedGemmEngine& operator=(const ScopedGemmEngine&) = delete;

 private:
  cpu::GemmEngine before_;
};

// The engines to test: both on the CPU where the build has a BLAS, the
// builtin one alone without; on CUDA the engine does not apply (one pass).
std::vector<cpu::GemmEngine> engines_under_test() {
  if (syncbn::testing::test_on_cuda() || !cpu::has_blas()) return {cpu::GemmEngine::Builtin};
  return {cpu::GemmEngine::Blas, cpu::GemmEngine::Builtin};
}

struct Product {
  std::int64_t m, n, k;
  bool trans_a, trans_b;
  double alpha, beta;
};

// op(A)[i][p] of A stored m x k (k x m when transposed).
double op_at(const std::vector<double>& a, bool trans, std::int64_t rows, std::int64_t cols, std::int64_t i,
             std::int64_t p) {
  return trans ? a[static_cast<std::size_t>(p * rows + i)] : a[static_cast<std::size_t>(i * cols + p)];
}

void check_product(const Product& pr, DType dtype, std::mt19937_64& rng) {
  INFO("m " << pr.m << ", n " << pr.n << ", k " << pr.k << ", trans_a " << pr.trans_a << ", trans_b " << pr.trans_b
            << ", alpha " << pr.alpha << ", beta " << pr.beta << ", dtype " << dtype_name(dtype));
  const bool exact = dtype == DType::Float32;
  const auto a = normal_values(pr.m * pr.k, rng, exact), b = normal_values(pr.k * pr.n, rng, exact);
  const auto c0 = normal_values(pr.m * pr.n, rng, exact);
  const Shape as = pr.trans_a ? Shape{pr.k, pr.m} : Shape{pr.m, pr.k};
  const Shape bs = pr.trans_b ? Shape{pr.n, pr.k} : Shape{pr.k, pr.n};
  Tensor c = device_tensor(c0, Shape{pr.m, pr.n}, dtype);
  if (pr.beta == 0.0) c.fill_(std::numeric_limits<double>::quiet_NaN());  // beta == 0 must not read C
  core::matmul_(c, device_tensor(a, as, dtype), device_tensor(b, bs, dtype), pr.trans_a, pr.trans_b, pr.alpha,
                pr.beta);
  const std::vector<double> got = c.to_vector<double>();
  const double tol = dtype == DType::Float64 ? 1e-13 : 1e-5;
  for (std::int64_t i = 0; i < pr.m; ++i) {
    for (std::int64_t j = 0; j < pr.n; ++j) {
      double want = 0.0, scale = 0.0;
      for (std::int64_t p = 0; p < pr.k; ++p) {
        const double term = op_at(a, pr.trans_a, pr.m, pr.k, i, p) * op_at(b, pr.trans_b, pr.k, pr.n, p, j);
        want += term;
        scale += std::abs(term);
      }
      const double before = pr.beta == 0.0 ? 0.0 : c0[static_cast<std::size_t>(i * pr.n + j)];
      want = pr.alpha * want + pr.beta * before;
      scale = std::abs(pr.alpha) * scale + std::abs(pr.beta * before);
      const double g = got[static_cast<std::size_t>(i * pr.n + j)];
      if (!(std::abs(g - want) <= tol * scale + 1e-300)) {
        INFO("first mismatch at (" << i << ", " << j << "): got " << g << ", expected " << want);
        CHECK(std::abs(g - want) <= tol * scale + 1e-300);
        return;
      }
    }
  }
}

}  // namespace

TEST_CASE("Matrix products match a float64 reference on every engine, transpose, alpha and beta",
          "[core][gemm][levels]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  for (const cpu::GemmEngine engine : engines_under_test()) {
    ScopedGemmEngine scoped(engine);
    CAPTURE(kSeed, dtype, cpu::gemm_engine_name(engine), test_device());
    std::mt19937_64 rng = syncbn::testing::make_rng(11, dtype == DType::Float64);
    auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
    // Sizes across the own GEMM's tiles and k blocks, Linear's shapes
    // (batch x features), and empty products (k == 0 leaves beta * C).
    const Product fixed[] = {{64, 10, 64, false, true, 1, 0},  {37, 23, 19, false, true, 1, 0},
                             {23, 19, 37, true, false, 1, 1},  {1, 1, 1, false, false, 1, 0},
                             {13, 70, 600, false, false, 1, 0}, {7, 33, 257, true, true, -0.5, 2},
                             {0, 5, 3, false, false, 1, 0},    {4, 0, 3, false, false, 1, 1},
                             {4, 5, 0, false, false, 1, 0.5},  {4, 5, 0, true, true, 2, 0}};
    for (const Product& pr : fixed) check_product(pr, dtype, rng);
    for (int i = 0; i < 24; ++i) {
      const double betas[] = {0.0, 1.0, 0.25};
      const Product pr{pick(1, 40), pick(1, 70), pick(1, 300), pick(0, 1) == 1, pick(0, 1) == 1,
                       pick(0, 1) == 1 ? 1.0 : -1.5, betas[pick(0, 2)]};
      check_product(pr, dtype, rng);
    }
  }
}

TEST_CASE("The builtin GEMM gives bit-identical rows whatever the number of rows", "[core][gemm][levels]") {
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("the builtin GEMM is a CPU engine");
  ScopedGemmEngine scoped(cpu::GemmEngine::Builtin);
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kSeed, dtype);
  std::mt19937_64 rng = syncbn::testing::make_rng(12);
  const std::int64_t m = 37, n = 45, k = 300;
  const Tensor a = device_tensor(normal_values(m * k, rng), Shape{m, k}, dtype);
  const Tensor b = device_tensor(normal_values(n * k, rng), Shape{n, k}, dtype);
  const std::vector<double> whole = core::matmul(a, b, false, true).to_vector<double>();
  // Rows [r0, r1) alone, as a replica's shard of the batch would be.
  for (const auto& [r0, r1] : {std::pair<std::int64_t, std::int64_t>{0, 1}, {5, 16}, {30, 37}, {1, 36}}) {
    const std::vector<double> part = core::matmul(a.rows(r0, r1).clone(), b, false, true).to_vector<double>();
    for (std::int64_t i = r0; i < r1; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        INFO("rows [" << r0 << ", " << r1 << "), element (" << i << ", " << j << ")");
        REQUIRE(part[static_cast<std::size_t>((i - r0) * n + j)] == whole[static_cast<std::size_t>(i * n + j)]);
      }
  }
}

TEST_CASE("The CPU GEMM engine defaults to the BLAS where there is one and can be chosen", "[core][gemm]") {
  const cpu::GemmEngine before = cpu::gemm_engine();
  CHECK(cpu::gemm_engine_name(cpu::GemmEngine::Blas) == "blas");
  CHECK(cpu::gemm_engine_name(cpu::GemmEngine::Builtin) == "builtin");
  CHECK(before == (cpu::has_blas() ? cpu::GemmEngine::Blas : cpu::GemmEngine::Builtin));
  {
    ScopedGemmEngine scoped(cpu::GemmEngine::Builtin);
    CHECK(cpu::gemm_engine() == cpu::GemmEngine::Builtin);
  }
  CHECK(cpu::gemm_engine() == before);
  if (!cpu::has_blas()) {
    CHECK_THROWS_MATCHES(cpu::set_gemm_engine(cpu::GemmEngine::Blas), Unsupported,
                         MessageIs("cpu::set_gemm_engine: engine blas, expected builtin: this build of syncbn has no "
                                   "BLAS (install a CBLAS such as Debian's libopenblas-dev and reconfigure)"));
    CHECK(cpu::gemm_engine() == before);
  }
  CHECK_THROWS_MATCHES(cpu::set_gemm_engine(static_cast<cpu::GemmEngine>(7)), InvalidArgument,
                       MessageIs("cpu::set_gemm_engine: engine 7, expected GemmEngine::Blas or GemmEngine::Builtin"));
  CHECK(cpu::gemm_engine() == before);
}
