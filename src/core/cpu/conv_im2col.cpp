// The im2col engine of the CPU convolutions on NCHW tensors (NHWC:
// conv_im2col_nhwc.cpp): matrix products through the
// BLAS this build found (compiled once, not per CPU level: the BLAS
// dispatches on the CPU itself). float32 and float64; conv_engines.cpp
// chooses between it and oneDNN for float32.
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
// itself. The lowering works a kernel tap at a time: the output positions
// whose tap falls inside the input form one span per row and column, found
// once per tap (inside_span), so that a row of col is zeros, a copy (one
// run for stride 1) and zeros, with no test per element; that halved the
// lowering's time against a bounds test per element and took the ResNet
// step from 1.84x to about 1.2x PyTorch's (docs/performance.md). The
// reference is the direct sum in tests/support/conv_spec.hpp.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv_im2col.hpp"

#include "backend/dispatch.hpp"
#include "syncbn/error.hpp"


namespace syncbn::cpu::im2col {
namespace {

using core::detail::Conv2dShape;

bool needs_lowering(const Conv2dShape& s) {
  return !(s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0);
}

// The output positions [lo, hi) along one axis whose tap reads inside the
// input: position o reads input index o * stride + first, which must lie in
// [0, extent). Computed once per tap so that the copies below have no test
// per element (the bounds test per element cost more than the copy).
struct Span {
  std::int64_t lo, hi;
};

Span inside_span(std::int64_t out_size, std::int64_t stride, std::int64_t first, std::int64_t extent) {
  const std::int64_t lo = first >= 0 ? 0 : (-first + stride - 1) / stride;
  const std::int64_t hi = extent - first <= 0 ? 0 : (extent - first + stride - 1) / stride;
  const std::int64_t clamped_lo = std::min(lo, out_size);
  return {clamped_lo, std::clamp(hi, clamped_lo, out_size)};
}

// The rows of col for the channels [0, channels) of plane x (h x w).
template <class T>
void im2col(const Conv2dShape& s, std::int64_t channels, const T* x, T* col) {
  const std::int64_t l = s.oh * s.ow;
  for (std::int64_t c = 0; c < channels; ++c) {
    const T* plane = x + c * s.h * s.w;
    for (std::int64_t i = 0; i < s.kh; ++i) {
      const std::int64_t y0 = i * s.dilation_h - s.pad_h;
      const Span rows = inside_span(s.oh, s.stride_h, y0, s.h);
      for (std::int64_t j = 0; j < s.kw; ++j) {
        const std::int64_t x0 = j * s.dilation_w - s.pad_w;
        const Span cols = inside_span(s.ow, s.stride_w, x0, s.w);
        T* row = col + ((c * s.kh + i) * s.kw + j) * l;
        std::fill(row, row + rows.lo * s.ow, T(0));
        for (std::int64_t oy = rows.lo; oy < rows.hi; ++oy) {
          const T* in = plane + (oy * s.stride_h + y0) * s.w + x0;
          T* out = row + oy * s.ow;
          std::fill(out, out + cols.lo, T(0));
          if (s.stride_w == 1) {
            std::copy(in + cols.lo, in + cols.hi, out + cols.lo);
          } else {
            for (std::int64_t ox = cols.lo; ox < cols.hi; ++ox) out[ox] = in[ox * s.stride_w];
          }
          std::fill(out + cols.hi, out + s.ow, T(0));
        }
        std::fill(row + rows.hi * s.ow, row + l, T(0));
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
      const std::int64_t y0 = i * s.dilation_h - s.pad_h;
      const Span rows = inside_span(s.oh, s.stride_h, y0, s.h);
      for (std::int64_t j = 0; j < s.kw; ++j) {
        const std::int64_t x0 = j * s.dilation_w - s.pad_w;
        const Span cols = inside_span(s.ow, s.stride_w, x0, s.w);
        const T* row = col + ((c * s.kh + i) * s.kw + j) * l;
        for (std::int64_t oy = rows.lo; oy < rows.hi; ++oy) {
          const T* in = row + oy * s.ow;
          T* out = plane + (oy * s.stride_h + y0) * s.w + x0;
          if (s.stride_w == 1) {
            for (std::int64_t ox = cols.lo; ox < cols.hi; ++ox) out[ox] += in[ox];
          } else {
            for (std::int64_t ox = cols.lo; ox < cols.hi; ++ox) out[ox * s.stride_w] += in[ox];
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
      gemm<T>("conv2d", false, false, g.cout, g.l, g.k, w + grp * g.cout * g.k, g.k, b, g.l, bias != nullptr ? T(1) : T(0),
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
      gemm<T>("conv2d_backward_input", true, false, g.k, g.l, g.cout, w + grp * g.cout * g.k, g.k, dyg, g.l, T(0), out, g.l);
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
      gemm<T>("conv2d_backward_weight", false, true, g.cout, g.k, g.l, dyg, g.l, b, g.l, T(1), dw + grp * g.cout * g.k, g.k);
    }
  }
}

// Sums in float64, as every reduction of the library.
template <class T>
void backward_bias_typed(std::int64_t n, std::int64_t c, std::int64_t l, const T* dy, T* db) {
  if (l == 1) {  // NHWC (or a 1x1 output): rows of c channels, read in order
    std::vector<double> acc(static_cast<std::size_t>(c), 0.0);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < c; ++j) acc[j] += static_cast<double>(dy[i * c + j]);
    for (std::int64_t j = 0; j < c; ++j) db[j] = static_cast<T>(static_cast<double>(db[j]) + acc[j]);
    return;
  }
  for (std::int64_t j = 0; j < c; ++j) {
    double acc = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = dy + (i * c + j) * l;
      for (std::int64_t p = 0; p < l; ++p) acc += static_cast<double>(row[p]);
    }
    db[j] = static_cast<T>(static_cast<double>(db[j]) + acc);
  }
}

}  // namespace

void conv_forward(DType dtype, const Conv2dShape& s, const void* x, const void* w, const void* bias, void* y) {
  if (s.channels_last) return conv_forward_nhwc(dtype, s, x, w, bias, y);
  core::detail::dispatch_floating(dtype, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    forward_typed<T>(s, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
                     static_cast<T*>(y));
  });
}

void conv_backward_input(DType dtype, const Conv2dShape& s, const void* dy, const void* w, void* dx) {
  if (s.channels_last) return conv_backward_input_nhwc(dtype, s, dy, w, dx);
  core::detail::dispatch_floating(dtype, "conv2d_backward_input", [&](auto tag) {
    using T = decltype(tag);
    backward_input_typed<T>(s, static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx));
  });
}

void conv_backward_weight(DType dtype, const Conv2dShape& s, const void* dy, const void* x, void* dw) {
  if (s.channels_last) return conv_backward_weight_nhwc(dtype, s, dy, x, dw);
  core::detail::dispatch_floating(dtype, "conv2d_backward_weight", [&](auto tag) {
    using T = decltype(tag);
    backward_weight_typed<T>(s, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dw));
  });
}

void conv_backward_bias(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy, void* db) {
  core::detail::dispatch_floating(dtype, "conv2d_backward_bias", [&](auto tag) {
    using T = decltype(tag);
    backward_bias_typed<T>(n, c, l, static_cast<const T*>(dy), static_cast<T*>(db));
  });
}

}  // namespace syncbn::cpu::im2col
