// CPU backend: 2-D pooling, the specification of the CUDA kernels (window
// bounds and divisors as PyTorch computes them; compiled once, not per CPU
// level: these loops are bounded by memory traffic, not arithmetic). Both
// layouts walk the same planes; only where a plane's pixels lie differs.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "backend/dispatch.hpp"
#include "backend/kernels.hpp"
#include "cpu/kernel_set.hpp"

namespace syncbn::cpu {
namespace {

using core::detail::Pool2dShape;

// Where the pixels of one plane lie, in the shape's layout
// (core::detail::plane_element): pixel q at base + q * step. Made once per
// plane, so that the loops over pixels do no division.
struct Plane {
  std::int64_t base, step;
  std::int64_t operator[](std::int64_t q) const { return base + q * step; }
};
Plane in_plane(const Pool2dShape& s, std::int64_t p) {
  return {core::detail::plane_element(s, p, 0, s.h * s.w), s.channels_last ? s.c : 1};
}
Plane out_plane(const Pool2dShape& s, std::int64_t p) {
  return {core::detail::plane_element(s, p, 0, s.oh * s.ow), s.channels_last ? s.c : 1};
}

// The first row (column) of adaptive window i of `out` over `in`, and one past its last.
std::int64_t adaptive_start(std::int64_t i, std::int64_t in, std::int64_t out) { return (i * in) / out; }
std::int64_t adaptive_end(std::int64_t i, std::int64_t in, std::int64_t out) { return ((i + 1) * in + out - 1) / out; }

// An average window: its clipped bounds and the divisor.
struct AvgWindow {
  std::int64_t h0, h1, w0, w1;
  double divisor;
};

AvgWindow avg_window(const Pool2dShape& s, std::int64_t oy, std::int64_t ox) {
  std::int64_t h0 = oy * s.stride_h - s.pad_h, w0 = ox * s.stride_w - s.pad_w;
  std::int64_t h1 = std::min(h0 + s.kh, s.h + s.pad_h), w1 = std::min(w0 + s.kw, s.w + s.pad_w);
  const std::int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = std::max<std::int64_t>(h0, 0);
  w0 = std::max<std::int64_t>(w0, 0);
  h1 = std::min(h1, s.h);
  w1 = std::min(w1, s.w);
  const std::int64_t inside = (h1 - h0) * (w1 - w0);
  return {h0, h1, w0, w1, static_cast<double>(s.count_include_pad ? padded : inside)};
}

template <class T>
void max_forward_typed(const Pool2dShape& s, const T* x, T* y, std::int64_t* indices) {
  for (std::int64_t p = 0; p < s.n * s.c; ++p) {
    const Plane in = in_plane(s, p), out = out_plane(s, p);
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
      for (std::int64_t ox = 0; ox < s.ow; ++ox) {
        T best = -std::numeric_limits<T>::infinity();
        std::int64_t at = -1;
        for (std::int64_t i = 0; i < s.kh; ++i) {
          const std::int64_t iy = oy * s.stride_h - s.pad_h + i * s.dilation_h;
          if (iy < 0 || iy >= s.h) continue;
          for (std::int64_t j = 0; j < s.kw; ++j) {
            const std::int64_t ix = ox * s.stride_w - s.pad_w + j * s.dilation_w;
            if (ix < 0 || ix >= s.w) continue;
            const T v = x[in[iy * s.w + ix]];
            // The first maximum wins ties; a NaN replaces anything (PyTorch).
            if (at < 0 || v > best || std::isnan(v)) {
              best = v;
              at = iy * s.w + ix;
            }
          }
        }
        const std::int64_t o = out[oy * s.ow + ox];
        y[o] = best;
        indices[o] = at;
      }
    }
  }
}

template <class T>
void max_backward_typed(const Pool2dShape& s, const T* dy, const std::int64_t* indices, T* dx) {
  std::fill(dx, dx + s.n * s.c * s.h * s.w, T(0));
  const std::int64_t l = s.oh * s.ow;
  for (std::int64_t p = 0; p < s.n * s.c; ++p) {
    const Plane in = in_plane(s, p), out = out_plane(s, p);
    for (std::int64_t q = 0; q < l; ++q) {
      const std::int64_t o = out[q];
      if (indices[o] >= 0) dx[in[indices[o]]] += dy[o];
    }
  }
}

template <class T>
void avg_forward_typed(const Pool2dShape& s, const T* x, T* y) {
  for (std::int64_t p = 0; p < s.n * s.c; ++p) {
    const Plane in = in_plane(s, p), out = out_plane(s, p);
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
      for (std::int64_t ox = 0; ox < s.ow; ++ox) {
        const AvgWindow win = avg_window(s, oy, ox);
        double acc = 0.0;
        for (std::int64_t iy = win.h0; iy < win.h1; ++iy)
          for (std::int64_t ix = win.w0; ix < win.w1; ++ix) acc += static_cast<double>(x[in[iy * s.w + ix]]);
        y[out[oy * s.ow + ox]] = static_cast<T>(acc / win.divisor);
      }
    }
  }
}

template <class T>
void avg_backward_typed(const Pool2dShape& s, const T* dy, T* dx) {
  std::fill(dx, dx + s.n * s.c * s.h * s.w, T(0));
  for (std::int64_t p = 0; p < s.n * s.c; ++p) {
    const Plane in = in_plane(s, p), out = out_plane(s, p);
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
      for (std::int64_t ox = 0; ox < s.ow; ++ox) {
        const AvgWindow win = avg_window(s, oy, ox);
        const T g = static_cast<T>(static_cast<double>(dy[out[oy * s.ow + ox]]) / win.divisor);
        for (std::int64_t iy = win.h0; iy < win.h1; ++iy)
          for (std::int64_t ix = win.w0; ix < win.w1; ++ix) dx[in[iy * s.w + ix]] += g;
      }
    }
  }
}

template <class T>
void adaptive_forward_typed(const Pool2dShape& s, const T* x, T* y) {
  for (std::int64_t p = 0; p < s.n * s.c; ++p) {
    const Plane in = in_plane(s, p), out = out_plane(s, p);
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
      const std::int64_t h0 = adaptive_start(oy, s.h, s.oh), h1 = adaptive_end(oy, s.h, s.oh);
      for (std::int64_t ox = 0; ox < s.ow; ++ox) {
        const std::int64_t w0 = adaptive_start(ox, s.w, s.ow), w1 = adaptive_end(ox, s.w, s.ow);
        double acc = 0.0;
        for (std::int64_t iy = h0; iy < h1; ++iy)
          for (std::int64_t ix = w0; ix < w1; ++ix) acc += static_cast<double>(x[in[iy * s.w + ix]]);
        y[out[oy * s.ow + ox]] = static_cast<T>(acc / static_cast<double>((h1 - h0) * (w1 - w0)));
      }
    }
  }
}

template <class T>
void adaptive_backward_typed(const Pool2dShape& s, const T* dy, T* dx) {
  std::fill(dx, dx + s.n * s.c * s.h * s.w, T(0));
  for (std::int64_t p = 0; p < s.n * s.c; ++p) {
    const Plane in = in_plane(s, p), out = out_plane(s, p);
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
      const std::int64_t h0 = adaptive_start(oy, s.h, s.oh), h1 = adaptive_end(oy, s.h, s.oh);
      for (std::int64_t ox = 0; ox < s.ow; ++ox) {
        const std::int64_t w0 = adaptive_start(ox, s.w, s.ow), w1 = adaptive_end(ox, s.w, s.ow);
        const T g = static_cast<T>(static_cast<double>(dy[out[oy * s.ow + ox]]) /
                                   static_cast<double>((h1 - h0) * (w1 - w0)));
        for (std::int64_t iy = h0; iy < h1; ++iy)
          for (std::int64_t ix = w0; ix < w1; ++ix) dx[in[iy * s.w + ix]] += g;
      }
    }
  }
}

void max_forward(Device, DType dtype, const Pool2dShape& s, const void* x, void* y, std::int64_t* indices) {
  core::detail::dispatch_floating(dtype, "max_pool2d", [&](auto tag) {
    using T = decltype(tag);
    max_forward_typed<T>(s, static_cast<const T*>(x), static_cast<T*>(y), indices);
  });
}

void max_backward(Device, DType dtype, const Pool2dShape& s, const void* dy, const std::int64_t* indices, void* dx) {
  core::detail::dispatch_floating(dtype, "max_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    max_backward_typed<T>(s, static_cast<const T*>(dy), indices, static_cast<T*>(dx));
  });
}

void avg_forward(Device, DType dtype, const Pool2dShape& s, const void* x, void* y) {
  core::detail::dispatch_floating(dtype, "avg_pool2d", [&](auto tag) {
    using T = decltype(tag);
    avg_forward_typed<T>(s, static_cast<const T*>(x), static_cast<T*>(y));
  });
}

void avg_backward(Device, DType dtype, const Pool2dShape& s, const void* dy, void* dx) {
  core::detail::dispatch_floating(dtype, "avg_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    avg_backward_typed<T>(s, static_cast<const T*>(dy), static_cast<T*>(dx));
  });
}

void adaptive_forward(Device, DType dtype, const Pool2dShape& s, const void* x, void* y) {
  core::detail::dispatch_floating(dtype, "adaptive_avg_pool2d", [&](auto tag) {
    using T = decltype(tag);
    adaptive_forward_typed<T>(s, static_cast<const T*>(x), static_cast<T*>(y));
  });
}

void adaptive_backward(Device, DType dtype, const Pool2dShape& s, const void* dy, void* dx) {
  core::detail::dispatch_floating(dtype, "adaptive_avg_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    adaptive_backward_typed<T>(s, static_cast<const T*>(dy), static_cast<T*>(dx));
  });
}

}  // namespace

const core::detail::PoolKernels kPoolKernels{max_forward,  max_backward,     avg_forward,
                                             avg_backward, adaptive_forward, adaptive_backward};

}  // namespace syncbn::cpu
