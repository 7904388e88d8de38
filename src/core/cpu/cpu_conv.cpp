// CPU backend: 2-D convolutions as matrix products through the BLAS this
// build found (compiled once, not per CPU level: the BLAS dispatches on the
// CPU itself).
//
// Note [Convolution on the CPU]
// For one sample and one group, the input's receptive fields are laid out as
// the columns of a matrix (im2col): row (c, i, j) of `col` holds, for every
// output position, the input value that kernel tap (i, j) of channel c sees
// there (0 in the padding). The forward is then one product
//   y_g (C_out/g x L) = w_g (C_out/g x K) * col (K x L),   K = C_in/g * kH * kW,
// the input gradient col = w_g^T * dy_g scattered back (col2im, adding where
// windows overlap), and the weight gradient w_g += dy_g * col^T. A 1x1
// kernel with stride 1 and no padding needs no lowering: col is the input
// itself. The reference is the direct sum in tests/support/conv_spec.hpp.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "backend/dispatch.hpp"
#include "backend/kernels.hpp"
#include "cpu/kernel_set.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/error.hpp"

#if SYNCBN_WITH_BLAS
#include <cblas.h>
#endif

namespace syncbn::cpu {
namespace {

using core::detail::Conv2dShape;

// C = alpha * op(A) * op(B) + beta * C, row-major, through CBLAS.
template <class T>
void blas_gemm([[maybe_unused]] bool trans_a, [[maybe_unused]] bool trans_b, [[maybe_unused]] std::int64_t m,
               [[maybe_unused]] std::int64_t n, [[maybe_unused]] std::int64_t k, [[maybe_unused]] const T* a,
               [[maybe_unused]] std::int64_t lda, [[maybe_unused]] const T* b, [[maybe_unused]] std::int64_t ldb,
               [[maybe_unused]] T beta, [[maybe_unused]] T* c, [[maybe_unused]] std::int64_t ldc) {
#if SYNCBN_WITH_BLAS
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f, a,
                static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  else
    cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0, a,
                static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
#else
  SYNCBN_THROW(Unsupported, "conv2d: this build of syncbn has no BLAS for CPU convolutions, expected one "
                            "(install a CBLAS such as Debian's libopenblas-dev and reconfigure)");
#endif
}

bool needs_lowering(const Conv2dShape& s) {
  return !(s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0);
}

// The rows of col for the channels [0, channels) of plane x (h x w).
template <class T>
void im2col(const Conv2dShape& s, std::int64_t channels, const T* x, T* col) {
  const std::int64_t l = s.oh * s.ow;
  for (std::int64_t c = 0; c < channels; ++c) {
    const T* plane = x + c * s.h * s.w;
    for (std::int64_t i = 0; i < s.kh; ++i) {
      for (std::int64_t j = 0; j < s.kw; ++j) {
        T* row = col + ((c * s.kh + i) * s.kw + j) * l;
        for (std::int64_t oy = 0; oy < s.oh; ++oy) {
          const std::int64_t iy = oy * s.stride_h - s.pad_h + i * s.dilation_h;
          T* out = row + oy * s.ow;
          if (iy < 0 || iy >= s.h) {
            std::fill(out, out + s.ow, T(0));
            continue;
          }
          const T* in = plane + iy * s.w;
          for (std::int64_t ox = 0; ox < s.ow; ++ox) {
            const std::int64_t ix = ox * s.stride_w - s.pad_w + j * s.dilation_w;
            out[ox] = (ix >= 0 && ix < s.w) ? in[ix] : T(0);
          }
        }
      }
    }
  }
}

// The inverse scatter: dx (channels planes, zeroed by the caller) += col.
template <class T>
void col2im(const Conv2dShape& s, std::int64_t channels, const T* col, T* dx) {
  const std::int64_t l = s.oh * s.ow;
  for (std::int64_t c = 0; c < channels; ++c) {
    T* plane = dx + c * s.h * s.w;
    for (std::int64_t i = 0; i < s.kh; ++i) {
      for (std::int64_t j = 0; j < s.kw; ++j) {
        const T* row = col + ((c * s.kh + i) * s.kw + j) * l;
        for (std::int64_t oy = 0; oy < s.oh; ++oy) {
          const std::int64_t iy = oy * s.stride_h - s.pad_h + i * s.dilation_h;
          if (iy < 0 || iy >= s.h) continue;
          const T* in = row + oy * s.ow;
          T* out = plane + iy * s.w;
          for (std::int64_t ox = 0; ox < s.ow; ++ox) {
            const std::int64_t ix = ox * s.stride_w - s.pad_w + j * s.dilation_w;
            if (ix >= 0 && ix < s.w) out[ix] += in[ox];
          }
        }
      }
    }
  }
}

struct GroupSizes {
  std::int64_t cin, cout, k, l;  // per group: input channels, output channels, K, L
};

GroupSizes group_sizes(const Conv2dShape& s) {
  const std::int64_t cin = s.c_in / s.groups;
  return {cin, s.c_out / s.groups, cin * s.kh * s.kw, s.oh * s.ow};
}

template <class T>
void forward_typed(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  const GroupSizes g = group_sizes(s);
  const bool lower = needs_lowering(s);
  std::vector<T> col(lower ? static_cast<std::size_t>(g.k * g.l) : 0);
  for (std::int64_t n = 0; n < s.n; ++n) {
    for (std::int64_t grp = 0; grp < s.groups; ++grp) {
      const T* xg = x + (n * s.c_in + grp * g.cin) * s.h * s.w;
      T* yg = y + (n * s.c_out + grp * g.cout) * g.l;
      if (bias != nullptr)
        for (std::int64_t o = 0; o < g.cout; ++o) std::fill(yg + o * g.l, yg + (o + 1) * g.l, bias[grp * g.cout + o]);
      const T* b = xg;
      if (lower) {
        im2col(s, g.cin, xg, col.data());
        b = col.data();
      }
      blas_gemm<T>(false, false, g.cout, g.l, g.k, w + grp * g.cout * g.k, g.k, b, g.l, bias != nullptr ? T(1) : T(0),
                   yg, g.l);
    }
  }
}

template <class T>
void backward_input_typed(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  const GroupSizes g = group_sizes(s);
  const bool lower = needs_lowering(s);
  std::vector<T> col(lower ? static_cast<std::size_t>(g.k * g.l) : 0);
  if (lower) std::fill(dx, dx + s.n * s.c_in * s.h * s.w, T(0));
  for (std::int64_t n = 0; n < s.n; ++n) {
    for (std::int64_t grp = 0; grp < s.groups; ++grp) {
      const T* dyg = dy + (n * s.c_out + grp * g.cout) * g.l;
      T* dxg = dx + (n * s.c_in + grp * g.cin) * s.h * s.w;
      T* out = lower ? col.data() : dxg;
      blas_gemm<T>(true, false, g.k, g.l, g.cout, w + grp * g.cout * g.k, g.k, dyg, g.l, T(0), out, g.l);
      if (lower) col2im(s, g.cin, col.data(), dxg);
    }
  }
}

template <class T>
void backward_weight_typed(const Conv2dShape& s, const T* dy, const T* x, T* dw) {
  const GroupSizes g = group_sizes(s);
  const bool lower = needs_lowering(s);
  std::vector<T> col(lower ? static_cast<std::size_t>(g.k * g.l) : 0);
  for (std::int64_t n = 0; n < s.n; ++n) {
    for (std::int64_t grp = 0; grp < s.groups; ++grp) {
      const T* xg = x + (n * s.c_in + grp * g.cin) * s.h * s.w;
      const T* dyg = dy + (n * s.c_out + grp * g.cout) * g.l;
      const T* b = xg;
      if (lower) {
        im2col(s, g.cin, xg, col.data());
        b = col.data();
      }
      blas_gemm<T>(false, true, g.cout, g.k, g.l, dyg, g.l, b, g.l, T(1), dw + grp * g.cout * g.k, g.k);
    }
  }
}

// Sums in float64, as every reduction of the library.
template <class T>
void backward_bias_typed(std::int64_t n, std::int64_t c, std::int64_t l, const T* dy, T* db) {
  for (std::int64_t j = 0; j < c; ++j) {
    double acc = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = dy + (i * c + j) * l;
      for (std::int64_t p = 0; p < l; ++p) acc += static_cast<double>(row[p]);
    }
    db[j] = static_cast<T>(static_cast<double>(db[j]) + acc);
  }
}

void conv_forward(Device, DType dtype, const Conv2dShape& s, const void* x, const void* w, const void* bias, void* y) {
  core::detail::dispatch_floating(dtype, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    forward_typed<T>(s, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
                     static_cast<T*>(y));
  });
}

void conv_backward_input(Device, DType dtype, const Conv2dShape& s, const void* dy, const void* w, void* dx) {
  core::detail::dispatch_floating(dtype, "conv2d_backward_input", [&](auto tag) {
    using T = decltype(tag);
    backward_input_typed<T>(s, static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx));
  });
}

void conv_backward_weight(Device, DType dtype, const Conv2dShape& s, const void* dy, const void* x, void* dw) {
  core::detail::dispatch_floating(dtype, "conv2d_backward_weight", [&](auto tag) {
    using T = decltype(tag);
    backward_weight_typed<T>(s, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dw));
  });
}

void conv_backward_bias(Device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                        void* db) {
  core::detail::dispatch_floating(dtype, "conv2d_backward_bias", [&](auto tag) {
    using T = decltype(tag);
    backward_bias_typed<T>(n, c, l, static_cast<const T*>(dy), static_cast<T*>(db));
  });
}

}  // namespace

bool has_blas() noexcept { return SYNCBN_WITH_BLAS != 0; }

}  // namespace syncbn::cpu

// OpenBLAS's thread controls, weak: a build on another CBLAS has none, and
// then the BLAS's threads cannot be told from here.
extern "C" void openblas_set_num_threads(int threads) __attribute__((weak));
extern "C" int openblas_get_num_threads() __attribute__((weak));

namespace syncbn::cpu {

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

const core::detail::ConvKernels kConvKernels{conv_forward, conv_backward_input, conv_backward_weight,
                                             conv_backward_bias};

}  // namespace syncbn::cpu
