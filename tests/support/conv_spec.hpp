#pragma once
// The specification of the convolution and pooling kernels: direct sums in
// float64 over plain vectors, NCHW, written from PyTorch's definitions (no
// lowering, no tricks), against which every backend is tested.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace syncbn::testing::spec {

/// One convolution's sizes.
struct Conv {
  std::int64_t n, c_in, h, w, c_out, kh, kw;
  std::int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
  std::int64_t oh() const { return (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
  std::int64_t ow() const { return (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
  std::int64_t x_size() const { return n * c_in * h * w; }
  std::int64_t w_size() const { return c_out * (c_in / groups) * kh * kw; }
  std::int64_t y_size() const { return n * c_out * oh() * ow(); }
};

// Calls f(x_index, w_index, y_index) for every product of the convolution.
template <class F>
void for_each_product(const Conv& s, F f) {
  const std::int64_t cin_g = s.c_in / s.groups, cout_g = s.c_out / s.groups, oh = s.oh(), ow = s.ow();
  for (std::int64_t b = 0; b < s.n; ++b)
    for (std::int64_t o = 0; o < s.c_out; ++o) {
      const std::int64_t g = o / cout_g;
      for (std::int64_t y = 0; y < oh; ++y)
        for (std::int64_t x = 0; x < ow; ++x)
          for (std::int64_t c = 0; c < cin_g; ++c)
            for (std::int64_t i = 0; i < s.kh; ++i)
              for (std::int64_t j = 0; j < s.kw; ++j) {
                const std::int64_t iy = y * s.sh - s.ph + i * s.dh, ix = x * s.sw - s.pw + j * s.dw;
                if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                f(((b * s.c_in + g * cin_g + c) * s.h + iy) * s.w + ix, ((o * cin_g + c) * s.kh + i) * s.kw + j,
                  ((b * s.c_out + o) * oh + y) * ow + x);
              }
    }
}

/// y = conv(x, w) + bias (bias empty: none).
inline std::vector<double> conv2d(const Conv& s, const std::vector<double>& x, const std::vector<double>& w,
                                  const std::vector<double>& bias) {
  std::vector<double> y(static_cast<std::size_t>(s.y_size()), 0.0);
  if (!bias.empty()) {
    const std::int64_t l = s.oh() * s.ow();
    for (std::int64_t i = 0; i < s.y_size(); ++i) y[i] = bias[(i / l) % s.c_out];
  }
  for_each_product(s, [&](std::int64_t xi, std::int64_t wi, std::int64_t yi) { y[yi] += x[xi] * w[wi]; });
  return y;
}

inline std::vector<double> conv2d_grad_input(const Conv& s, const std::vector<double>& dy,
                                             const std::vector<double>& w) {
  std::vector<double> dx(static_cast<std::size_t>(s.x_size()), 0.0);
  for_each_product(s, [&](std::int64_t xi, std::int64_t wi, std::int64_t yi) { dx[xi] += dy[yi] * w[wi]; });
  return dx;
}

inline std::vector<double> conv2d_grad_weight(const Conv& s, const std::vector<double>& dy,
                                              const std::vector<double>& x) {
  std::vector<double> dw(static_cast<std::size_t>(s.w_size()), 0.0);
  for_each_product(s, [&](std::int64_t xi, std::int64_t wi, std::int64_t yi) { dw[wi] += dy[yi] * x[xi]; });
  return dw;
}

inline std::vector<double> conv2d_grad_bias(const Conv& s, const std::vector<double>& dy) {
  std::vector<double> db(static_cast<std::size_t>(s.c_out), 0.0);
  const std::int64_t l = s.oh() * s.ow();
  for (std::int64_t i = 0; i < s.y_size(); ++i) db[(i / l) % s.c_out] += dy[i];
  return db;
}

/// One pooling's sizes (PyTorch's output size rule, ceil_mode included).
struct Pool {
  std::int64_t n, c, h, w, kh, kw, sh, sw, ph = 0, pw = 0, dh = 1, dw = 1;
  bool ceil_mode = false, count_include_pad = true;
  static std::int64_t out(std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t p, std::int64_t d, bool ceil) {
    const double span = static_cast<double>(in + 2 * p - d * (k - 1) - 1) / static_cast<double>(s);
    std::int64_t o = static_cast<std::int64_t>(ceil ? std::ceil(span) : std::floor(span)) + 1;
    if (ceil && (o - 1) * s >= in + p) --o;
    return o;
  }
  std::int64_t oh() const { return out(h, kh, sh, ph, dh, ceil_mode); }
  std::int64_t ow() const { return out(w, kw, sw, pw, dw, ceil_mode); }
};

/// Max pooling: values and (first-maximum) plane positions; a window that
/// holds no input (dilated taps all in the padding) gives -inf at -1.
inline void max_pool2d(const Pool& s, const std::vector<double>& x, std::vector<double>& y,
                       std::vector<std::int64_t>& at) {
  const std::int64_t oh = s.oh(), ow = s.ow();
  y.assign(static_cast<std::size_t>(s.n * s.c * oh * ow), 0.0);
  at.assign(y.size(), -1);
  for (std::int64_t p = 0; p < s.n * s.c; ++p)
    for (std::int64_t oy = 0; oy < oh; ++oy)
      for (std::int64_t ox = 0; ox < ow; ++ox) {
        const std::int64_t o = (p * oh + oy) * ow + ox;
        double best = -std::numeric_limits<double>::infinity();
        for (std::int64_t i = 0; i < s.kh; ++i)
          for (std::int64_t j = 0; j < s.kw; ++j) {
            const std::int64_t iy = oy * s.sh - s.ph + i * s.dh, ix = ox * s.sw - s.pw + j * s.dw;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
            const double v = x[(p * s.h + iy) * s.w + ix];
            if (at[o] < 0 || v > best) {
              best = v;
              at[o] = iy * s.w + ix;
            }
          }
        y[o] = best;
      }
}

inline std::vector<double> max_pool2d_grad(const Pool& s, const std::vector<double>& dy,
                                           const std::vector<std::int64_t>& at) {
  std::vector<double> dx(static_cast<std::size_t>(s.n * s.c * s.h * s.w), 0.0);
  const std::int64_t l = s.oh() * s.ow();
  for (std::size_t o = 0; o < dy.size(); ++o)
    if (at[o] >= 0) dx[(static_cast<std::int64_t>(o) / l) * s.h * s.w + at[o]] += dy[o];
  return dx;
}

// Calls f(input index, output index, divisor) for every input of every average window.
template <class F>
void for_each_avg_term(const Pool& s, F f) {
  const std::int64_t oh = s.oh(), ow = s.ow();
  for (std::int64_t p = 0; p < s.n * s.c; ++p)
    for (std::int64_t oy = 0; oy < oh; ++oy)
      for (std::int64_t ox = 0; ox < ow; ++ox) {
        const std::int64_t y0 = oy * s.sh - s.ph, x0 = ox * s.sw - s.pw;
        // The padded window ends at the padded input's edge; the divisor
        // counts it (count_include_pad) or only the real inputs.
        const std::int64_t y1 = std::min(y0 + s.kh, s.h + s.ph), x1 = std::min(x0 + s.kw, s.w + s.pw);
        std::int64_t inside = 0;
        for (std::int64_t iy = y0; iy < y1; ++iy)
          for (std::int64_t ix = x0; ix < x1; ++ix) inside += (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w);
        const double divisor = static_cast<double>(s.count_include_pad ? (y1 - y0) * (x1 - x0) : inside);
        for (std::int64_t iy = std::max<std::int64_t>(y0, 0); iy < std::min(y1, s.h); ++iy)
          for (std::int64_t ix = std::max<std::int64_t>(x0, 0); ix < std::min(x1, s.w); ++ix)
            f((p * s.h + iy) * s.w + ix, (p * oh + oy) * ow + ox, divisor);
      }
}

inline std::vector<double> avg_pool2d(const Pool& s, const std::vector<double>& x) {
  std::vector<double> y(static_cast<std::size_t>(s.n * s.c * s.oh() * s.ow()), 0.0);
  for_each_avg_term(s, [&](std::int64_t xi, std::int64_t yi, double d) { y[yi] += x[xi] / d; });
  return y;
}

inline std::vector<double> avg_pool2d_grad(const Pool& s, const std::vector<double>& dy) {
  std::vector<double> dx(static_cast<std::size_t>(s.n * s.c * s.h * s.w), 0.0);
  for_each_avg_term(s, [&](std::int64_t xi, std::int64_t yi, double d) { dx[xi] += dy[yi] / d; });
  return dx;
}

/// Adaptive average pooling of (n*c planes of h x w) to oh x ow.
inline std::vector<double> adaptive_avg_pool2d(std::int64_t planes, std::int64_t h, std::int64_t w, std::int64_t oh,
                                               std::int64_t ow, const std::vector<double>& x) {
  std::vector<double> y(static_cast<std::size_t>(planes * oh * ow), 0.0);
  for (std::int64_t p = 0; p < planes; ++p)
    for (std::int64_t i = 0; i < oh; ++i)
      for (std::int64_t j = 0; j < ow; ++j) {
        const auto y0 = static_cast<std::int64_t>(std::floor(static_cast<double>(i * h) / oh));
        const auto y1 = static_cast<std::int64_t>(std::ceil(static_cast<double>((i + 1) * h) / oh));
        const auto x0 = static_cast<std::int64_t>(std::floor(static_cast<double>(j * w) / ow));
        const auto x1 = static_cast<std::int64_t>(std::ceil(static_cast<double>((j + 1) * w) / ow));
        double acc = 0.0;
        for (std::int64_t a = y0; a < y1; ++a)
          for (std::int64_t b = x0; b < x1; ++b) acc += x[(p * h + a) * w + b];
        y[(p * oh + i) * ow + j] = acc / static_cast<double>((y1 - y0) * (x1 - x0));
      }
  return y;
}

}  // namespace syncbn::testing::spec
