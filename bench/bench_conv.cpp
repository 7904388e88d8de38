// bench_conv: Conv2d's stages alone on ResNet layer shapes, float32, one
// replica: the forward, the input gradient and the weight gradient, in
// GFLOP/s.
//
//   bench_conv [--shapes 64x16x28x28-16-k3s1p1,...] [--min-ms 200] [--reps 5] [--warmup 2]
//              [--blas-threads N] [--engine auto|im2col|onednn]
//
// A shape reads N x C x H x W - C_out - k<kernel> s<stride> p<padding> (no
// bias, as in the ResNet). Each stage is timed alone (median of --reps
// samples of at least --min-ms); the FLOP count of each stage is that of the
// direct convolution, 2 * N * C_out * H_out * W_out * C * k * k, so
// forward+backward does three times the forward's work. The weight gradient
// accumulates into a gradient that is never cleared, as in training.
// Check pass before timing: 64 sampled elements of each result against a
// float64 direct sum (#wrong counts those off by more than 1e-4 of the sum
// of the absolute terms). --blas-threads sets OpenBLAS's thread count
// (openblas_set_num_threads) where the BLAS is OpenBLAS; without it the
// BLAS keeps its own default (OPENBLAS_NUM_THREADS or one per core).
// --engine pins the CPU convolution engine (cpu::set_conv_engine; default:
// the build's setting, Auto where it has oneDNN); Auto's choices are printed
// at the end. oneDNN's threads are OpenMP's (OMP_NUM_THREADS).
//
// Where the benchmark links a CBLAS, two more columns show where the time
// goes (Note [Convolution on the CPU]): `gemm_ms` times the matrix products
// alone that the CPU backend makes for forward+backward (per sample: y =
// w * col, col = w^T * dy, dw += dy * col^T, each M x N x K as in
// conv_im2col.cpp) on scratch operands, so that fwdbwd_ms - gemm_ms is the cost
// of the lowering (im2col, col2im, zero fills); `batched_ms` times the same
// three products once for the whole batch (N * H_out * W_out columns), what
// a lowering of all samples at once would hand the BLAS (it would also need
// y and dy reordered between (C_out, N, L) and NCHW, which is not timed).

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/syncbn.hpp"

#if SYNCBN_BENCH_CBLAS
#include <cblas.h>
#endif

extern "C" int openblas_get_num_threads(void) __attribute__((weak));
extern "C" char* openblas_get_corename(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace {

using namespace syncbn;

struct ConvShape {
  std::int64_t n, c, h, w, c_out, k, stride, pad;
  std::int64_t oh() const { return (h + 2 * pad - k) / stride + 1; }
  std::int64_t ow() const { return (w + 2 * pad - k) / stride + 1; }
  double flops() const { return 2.0 * static_cast<double>(n * c_out * oh() * ow() * c * k * k); }
  std::string str() const {
    char text[96];
    std::snprintf(text, sizeof text, "%" PRId64 "x%" PRId64 "x%" PRId64 "x%" PRId64 "-%" PRId64 "-k%" PRId64
                  "s%" PRId64 "p%" PRId64, n, c, h, w, c_out, k, stride, pad);
    return text;
  }
};

ConvShape parse_shape(const std::string& text) {
  ConvShape s{};
  long v[8];
  if (std::sscanf(text.c_str(), "%ldx%ldx%ldx%ld-%ld-k%lds%ldp%ld", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                  &v[7]) != 8) {
    std::fprintf(stderr, "--shapes: expected NxCxHxW-Cout-kKsSpP, got '%s'\n", text.c_str());
    std::exit(2);
  }
  s = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
  return s;
}

// Counts sampled elements of y, dx and dw that differ from float64 direct sums.
long check(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& y, const Tensor& dx,
           const Tensor& dw) {
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* dyp = dy.data<float>();
  const std::int64_t oh = s.oh(), ow = s.ow();
  const auto X = [&](std::int64_t n, std::int64_t c, std::int64_t iy, std::int64_t ix) -> double {
    if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) return 0.0;
    return xp[((n * s.c + c) * s.h + iy) * s.w + ix];
  };
  const auto W = [&](std::int64_t o, std::int64_t c, std::int64_t i, std::int64_t j) -> double {
    return wp[((o * s.c + c) * s.k + i) * s.k + j];
  };
  const auto DY = [&](std::int64_t n, std::int64_t o, std::int64_t oy, std::int64_t ox) -> double {
    return dyp[((n * s.c_out + o) * oh + oy) * ow + ox];
  };
  const auto off = [](double got, double ref, double scale) { return std::abs(got - ref) > 1e-4 * scale + 1e-6; };
  std::mt19937_64 rng(3);
  const auto pick = [&](std::int64_t n) { return std::uniform_int_distribution<std::int64_t>(0, n - 1)(rng); };
  long wrong = 0;
  for (int t = 0; t < 64; ++t) {
    {  // y[n, o, oy, ox]
      const std::int64_t n = pick(s.n), o = pick(s.c_out), oy = pick(oh), ox = pick(ow);
      double ref = 0, scale = 0;
      for (std::int64_t c = 0; c < s.c; ++c)
        for (std::int64_t i = 0; i < s.k; ++i)
          for (std::int64_t j = 0; j < s.k; ++j) {
            const double term = W(o, c, i, j) * X(n, c, oy * s.stride - s.pad + i, ox * s.stride - s.pad + j);
            ref += term;
            scale += std::abs(term);
          }
      wrong += off(y.data<float>()[((n * s.c_out + o) * oh + oy) * ow + ox], ref, scale);
    }
    {  // dx[n, c, iy, ix]
      const std::int64_t n = pick(s.n), c = pick(s.c), iy = pick(s.h), ix = pick(s.w);
      double ref = 0, scale = 0;
      for (std::int64_t o = 0; o < s.c_out; ++o)
        for (std::int64_t i = 0; i < s.k; ++i)
          for (std::int64_t j = 0; j < s.k; ++j) {
            const std::int64_t ty = iy + s.pad - i, tx = ix + s.pad - j;
            if (ty < 0 || tx < 0 || ty % s.stride != 0 || tx % s.stride != 0) continue;
            const std::int64_t oy = ty / s.stride, ox = tx / s.stride;
            if (oy >= oh || ox >= ow) continue;
            const double term = DY(n, o, oy, ox) * W(o, c, i, j);
            ref += term;
            scale += std::abs(term);
          }
      wrong += off(dx.data<float>()[((n * s.c + c) * s.h + iy) * s.w + ix], ref, scale);
    }
    {  // dw[o, c, i, j]
      const std::int64_t o = pick(s.c_out), c = pick(s.c), i = pick(s.k), j = pick(s.k);
      double ref = 0, scale = 0;
      for (std::int64_t n = 0; n < s.n; ++n)
        for (std::int64_t oy = 0; oy < oh; ++oy)
          for (std::int64_t ox = 0; ox < ow; ++ox) {
            const double term = DY(n, o, oy, ox) * X(n, c, oy * s.stride - s.pad + i, ox * s.stride - s.pad + j);
            ref += term;
            scale += std::abs(term);
          }
      wrong += off(dw.data<float>()[((o * s.c + c) * s.k + i) * s.k + j], ref, scale);
    }
  }
  return wrong;
}

#if SYNCBN_BENCH_CBLAS
// Seconds per call of the conv's products alone: per sample (batched = false)
// or once over all samples' columns (batched = true).
double gemm_seconds(const ConvShape& s, bool batched, double min_s, int reps, int warmup) {
  const int k = static_cast<int>(s.c * s.k * s.k), cout = static_cast<int>(s.c_out);
  const int l = static_cast<int>(s.oh() * s.ow()), calls = batched ? 1 : static_cast<int>(s.n);
  const int cols = batched ? static_cast<int>(s.n) * l : l;
  std::vector<float> col(static_cast<std::size_t>(k) * cols, 0.5f), w(static_cast<std::size_t>(cout) * k, 0.25f),
      y(static_cast<std::size_t>(cout) * cols, 0.0f), dw(static_cast<std::size_t>(cout) * k, 0.0f);
  return bench::median_seconds_per_call(
      [&] {
        for (int i = 0; i < calls; ++i) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, cols, k, 1.0f, w.data(), k, col.data(), cols,
                      0.0f, y.data(), cols);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, cols, cout, 1.0f, w.data(), k, y.data(), cols, 0.0f,
                      col.data(), cols);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cout, k, cols, 1.0f, y.data(), cols, col.data(), cols,
                      1.0f, dw.data(), k);
        }
      },
      min_s, reps, warmup);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  using bench::flag;
  const std::vector<std::string> shape_texts = bench::str_list(flag(
      argc, argv, "--shapes",
      "64x1x28x28-16-k3s1p1,64x16x28x28-16-k3s1p1,64x16x28x28-32-k3s2p1,64x32x14x14-32-k3s1p1,"
      "64x32x28x28-64-k3s2p1,64x64x7x7-64-k3s1p1"));
  const double min_s = std::stod(flag(argc, argv, "--min-ms", "200")) / 1e3;
  const int reps = std::stoi(flag(argc, argv, "--reps", "5"));
  const int warmup = std::stoi(flag(argc, argv, "--warmup", "2"));
  const std::string blas_threads = flag(argc, argv, "--blas-threads", "");
  if (!blas_threads.empty() && openblas_set_num_threads != nullptr) openblas_set_num_threads(std::stoi(blas_threads));
  const std::string engine = flag(argc, argv, "--engine", "");
  for (const auto e : {cpu::ConvEngine::Auto, cpu::ConvEngine::Im2col, cpu::ConvEngine::OneDnn})
    if (engine == cpu::conv_engine_name(e)) cpu::set_conv_engine(e);

  std::printf("# bench_conv: float32 NCHW, no bias; median of %d samples of >= %.0f ms per stage\n", reps,
              min_s * 1e3);
  std::printf("%s; OpenBLAS threads: %s, kernels: %s; conv engine: %s, oneDNN threads: %d\n",
              bench::cpu_level_line().c_str(),
              openblas_get_num_threads != nullptr ? std::to_string(openblas_get_num_threads()).c_str() : "n/a",
              openblas_get_corename != nullptr ? openblas_get_corename() : "n/a",
              std::string(cpu::conv_engine_name(cpu::conv_engine())).c_str(), cpu::onednn_threads());
  std::printf("%-24s %9s %9s %9s %9s %9s %11s %7s %9s %10s\n", "shape", "fwd_ms", "dx_ms", "dw_ms", "fwdbwd_ms",
              "fwd_GF/s", "fwdbwd_GF/s", "#wrong", "gemm_ms", "batched_ms");
  for (const auto& text : shape_texts) {
    const ConvShape s = parse_shape(text);
    core::Conv2dGeometry g;
    g.stride = {s.stride, s.stride};
    g.padding = {s.pad, s.pad};
    const Tensor x = Tensor::randn(Shape{s.n, s.c, s.h, s.w}, 1);
    const Tensor w = Tensor::randn(Shape{s.c_out, s.c, s.k, s.k}, 2, DType::Float32, Device(), 0.0,
                                   1.0 / std::sqrt(static_cast<double>(s.c * s.k * s.k)));
    const Tensor dy = Tensor::randn(Shape{s.n, s.c_out, s.oh(), s.ow()}, 3);
    const Tensor none;
    const Tensor y = core::conv2d(x, w, none, g);
    const Tensor dx = core::conv2d_backward_input(dy, w, x.shape(), g);
    const Tensor dw = Tensor::zeros(w.shape());
    core::conv2d_backward_weight_(dw, dy, x, g);
    const long wrong = check(s, x, w, dy, y, dx, dw);

    const double fwd = bench::median_seconds_per_call([&] { (void)core::conv2d(x, w, none, g); }, min_s, reps, warmup);
    const double bx = bench::median_seconds_per_call(
        [&] { (void)core::conv2d_backward_input(dy, w, x.shape(), g); }, min_s, reps, warmup);
    const double bw =
        bench::median_seconds_per_call([&] { core::conv2d_backward_weight_(dw, dy, x, g); }, min_s, reps, warmup);
    const double total = fwd + bx + bw;
    std::printf("%-24s %9.3f %9.3f %9.3f %9.3f %9.1f %11.1f %7ld", s.str().c_str(), fwd * 1e3, bx * 1e3, bw * 1e3,
                total * 1e3, s.flops() / fwd / 1e9, 3 * s.flops() / total / 1e9, wrong);
#if SYNCBN_BENCH_CBLAS
    std::printf(" %9.3f %10.3f\n", gemm_seconds(s, false, min_s, reps, warmup) * 1e3,
                gemm_seconds(s, true, min_s, reps, warmup) * 1e3);
#else
    std::printf(" %9s %10s\n", "-", "-");
#endif
    std::fflush(stdout);
  }
  bench::print_conv_choices();
  return 0;
}
