// bench_gemm: the three matrix products of a Linear layer through the
// library's own CPU GEMM (core::matmul_ with cpu::GemmEngine::Builtin, Note
// [CPU GEMM] in src/core/cpu/cpu_gemm.cpp) beside OpenBLAS's cblas_sgemm on
// the same operands, float32. (matmul_'s default engine is the BLAS where
// the build has one: Note [CPU GEMM engines] in src/core/cpu/cpu_blas.cpp;
// this is the measurement behind that choice.)
//
//   bench_gemm [--shapes 8x2x64,...] [--min-ms 100] [--reps 5] [--warmup 3] [--blas-threads N]
//
// A shape reads batch x in x out. For each, the products Linear makes:
//   fwd  y = x * W^T        (batch x out, depth in; W is out x in)
//   dW   gW += dy^T * x     (out x in, depth batch)
//   dx   dx = dy * W        (batch x in, depth out)
// (Linear's forward also broadcasts its bias as a depth-1 product first; it
// is left out here.) Both sides get the same row-major operands and
// transposes; OpenBLAS reads transposed operands in place, the library
// copies them first, which is part of what is measured. Median of --reps
// samples of at least --min-ms; GFLOP/s = 2 * m * n * k / time. Check pass:
// both results of every product from zeroed outputs must agree within
// 1e-5 * sqrt(depth) of the largest |value| (#wrong). --blas-threads sets
// OpenBLAS's thread count (openblas_set_num_threads); the library's GEMM
// always runs on the calling thread.

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/syncbn.hpp"

extern "C" int openblas_get_num_threads(void) __attribute__((weak));
extern "C" char* openblas_get_corename(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace {

using namespace syncbn;

struct Product {
  const char* name;
  bool trans_a, trans_b;
  double beta;
  Tensor a, b, c;
  std::int64_t m, n, k;
};

void blas(const Product& p) {
  const int lda = static_cast<int>(p.a.size(1)), ldb = static_cast<int>(p.b.size(1));
  cblas_sgemm(CblasRowMajor, p.trans_a ? CblasTrans : CblasNoTrans, p.trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k), 1.0f, p.a.data<float>(), lda,
              p.b.data<float>(), ldb, static_cast<float>(p.beta), p.c.data<float>(), static_cast<int>(p.n));
}

void library(const Product& p) { core::matmul_(p.c, p.a, p.b, p.trans_a, p.trans_b, 1.0, p.beta); }

long check(const Product& p) {
  Product ours = p, theirs = p;
  ours.c = Tensor::zeros(p.c.shape());
  theirs.c = Tensor::zeros(p.c.shape());
  library(ours);
  blas(theirs);
  const std::vector<float> u = ours.c.to_vector<float>(), v = theirs.c.to_vector<float>();
  double largest = 0, diff = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    largest = std::max(largest, std::abs(static_cast<double>(v[i])));
    diff = std::max(diff, std::abs(static_cast<double>(u[i]) - v[i]));
  }
  return diff > 1e-5 * std::sqrt(static_cast<double>(p.k)) * largest + 1e-6 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  using bench::flag;
  const std::vector<std::string> shapes =
      bench::str_list(flag(argc, argv, "--shapes", "8x2x64,8x64x64,8x64x3,64x64x10,256x1024x1024"));
  const double min_s = std::stod(flag(argc, argv, "--min-ms", "100")) / 1e3;
  const int reps = std::stoi(flag(argc, argv, "--reps", "5"));
  const int warmup = std::stoi(flag(argc, argv, "--warmup", "3"));
  const std::string blas_threads = flag(argc, argv, "--blas-threads", "");
  if (!blas_threads.empty() && openblas_set_num_threads != nullptr) openblas_set_num_threads(std::stoi(blas_threads));
  cpu::set_gemm_engine(cpu::GemmEngine::Builtin);

  std::printf("# bench_gemm: float32 row-major; median of %d samples of >= %.0f ms\n", reps, min_s * 1e3);
  std::printf("%s; OpenBLAS threads: %s, kernels: %s\n", bench::cpu_level_line().c_str(),
              openblas_get_num_threads != nullptr ? std::to_string(openblas_get_num_threads()).c_str() : "n/a",
              openblas_get_corename != nullptr ? openblas_get_corename() : "n/a");
  std::printf("%-16s %-4s %6s %6s %6s %11s %11s %9s %9s %12s %7s\n", "shape", "op", "m", "n", "k", "syncbn_us",
              "openblas_us", "syncbn_GF", "blas_GF", "t_sync/t_blas", "#wrong");
  for (const auto& text : shapes) {
    long dims[3];
    if (std::sscanf(text.c_str(), "%ldx%ldx%ld", &dims[0], &dims[1], &dims[2]) != 3) {
      std::fprintf(stderr, "--shapes: expected BATCHxINxOUT, got '%s'\n", text.c_str());
      return 2;
    }
    const std::int64_t batch = dims[0], in = dims[1], out = dims[2];
    const Tensor x = Tensor::randn(Shape{batch, in}, 1);
    const Tensor w = Tensor::randn(Shape{out, in}, 2);
    const Tensor dy = Tensor::randn(Shape{batch, out}, 3);
    const std::vector<Product> products{
        {"fwd", false, true, 0.0, x, w, Tensor::empty(Shape{batch, out}), batch, out, in},
        {"dW", true, false, 1.0, dy, x, Tensor::zeros(Shape{out, in}), out, in, batch},
        {"dx", false, false, 0.0, dy, w, Tensor::empty(Shape{batch, in}), batch, in, out},
    };
    for (const auto& p : products) {
      const long wrong = check(p);
      const double ours = bench::median_seconds_per_call([&] { library(p); }, min_s, reps, warmup);
      const double theirs = bench::median_seconds_per_call([&] { blas(p); }, min_s, reps, warmup);
      const double flops = 2.0 * static_cast<double>(p.m * p.n * p.k);
      std::printf("%-16s %-4s %6ld %6ld %6ld %11.3f %11.3f %9.2f %9.2f %12.2f %7ld\n", text.c_str(), p.name,
                  static_cast<long>(p.m), static_cast<long>(p.n), static_cast<long>(p.k), ours * 1e6, theirs * 1e6,
                  flops / ours / 1e9, flops / theirs / 1e9, ours / theirs, wrong);
      std::fflush(stdout);
    }
  }
  return 0;
}
