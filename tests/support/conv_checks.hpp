#pragma once
// One convolution checked against the direct sums of support/conv_spec.hpp
// on the device under test: the forward, the input gradient and the
// accumulating weight and bias gradients (test_conv.cpp, and the engines'
// tests in test_conv_engines.cpp).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/conv_spec.hpp"
#include "support/device_under_test.hpp"
#include "support/random_values.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/core/conv.hpp"

namespace syncbn::testing {


inline std::string describe(const spec::Conv& s) {
  std::ostringstream os;
  os << "x (" << s.n << ", " << s.c_in << ", " << s.h << ", " << s.w << "), weight (" << s.c_out << ", "
     << s.c_in / s.groups << ", " << s.kh << ", " << s.kw << "), stride " << s.sh << "x" << s.sw << ", padding " << s.ph
     << "x" << s.pw << ", dilation " << s.dh << "x" << s.dw << ", groups " << s.groups;
  return os.str();
}

inline core::Conv2dGeometry geometry(const spec::Conv& s, core::ChannelLayout layout = core::ChannelLayout::First) {
  return {{s.sh, s.sw}, {s.ph, s.pw}, {s.dh, s.dw}, s.groups, layout};
}

// A random valid convolution (the padded input holds the dilated kernel);
// padding up to 3 lets whole kernel rows and columns fall in the padding.
inline spec::Conv random_conv(std::mt19937_64& rng) {
  auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  for (;;) {
    spec::Conv s{};
    s.groups = pick(1, 3);
    s.n = pick(0, 3);
    s.c_in = s.groups * pick(1, 3);
    s.c_out = s.groups * pick(1, 3);
    s.h = pick(1, 9);
    s.w = pick(1, 9);
    s.kh = pick(1, 4);
    s.kw = pick(1, 4);
    s.sh = pick(1, 3);
    s.sw = pick(1, 3);
    s.ph = pick(0, 3);
    s.pw = pick(0, 3);
    s.dh = pick(1, 2);
    s.dw = pick(1, 2);
    if (s.h + 2 * s.ph >= s.dh * (s.kh - 1) + 1 && s.w + 2 * s.pw >= s.dw * (s.kw - 1) + 1) return s;
  }
}

inline std::vector<double> absolute(std::vector<double> v) {
  for (double& e : v) e = std::abs(e);
  return v;
}

// Values rounded to dtype, as the kernels see them.
inline std::vector<double> rounded(const std::vector<double>& v, DType dtype) {
  if (dtype == DType::Float64) return v;
  std::vector<double> out;
  for (double e : v) out.push_back(static_cast<float>(e));
  return out;
}

// |got - want| <= tol * scale (scale: the sum of the magnitudes of the terms).
inline void check_sums(const Tensor& got, const std::vector<double>& want, const std::vector<double>& scale, DType dtype,
                const std::string& what) {
  INFO(what);
  const std::vector<double> g = got.to_vector<double>();
  REQUIRE(g.size() == want.size());
  const double tol = dtype == DType::Float64 ? 1e-13 : 1e-5;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double allowed = tol * scale[i] + 1e-300;
    if (!(std::abs(g[i] - want[i]) <= allowed)) {
      INFO("first mismatch at index " << i << " of " << g.size() << ": got " << g[i] << ", expected " << want[i]);
      CHECK(std::abs(g[i] - want[i]) <= allowed);
      return;
    }
  }
}

// With layout Last the activations go in NHWC (the NCHW values permuted by
// core::to_channels_last) and come back permuted to NCHW for the spec; the
// weight is NCHW-ordered in both.
inline void check_conv_case(const spec::Conv& s, DType dtype, bool with_bias, std::mt19937_64& rng,
                            core::ChannelLayout layout = core::ChannelLayout::First) {
  const bool last = layout == core::ChannelLayout::Last;
  INFO(describe(s) << ", dtype " << dtype_name(dtype) << (with_bias ? ", bias" : "") << ", "
                   << core::channel_layout_name(layout));
  const Shape xs_nchw{s.n, s.c_in, s.h, s.w}, ws{s.c_out, s.c_in / s.groups, s.kh, s.kw},
      ys_nchw{s.n, s.c_out, s.oh(), s.ow()};
  const Shape xs = last ? Shape{s.n, s.h, s.w, s.c_in} : xs_nchw, ys = last ? Shape{s.n, s.oh(), s.ow(), s.c_out} : ys_nchw;
  // An activation in the layout under test, and a result back in NCHW.
  const auto activation = [&](const std::vector<double>& v, const Shape& nchw) {
    const Tensor t = device_tensor(v, nchw, dtype);
    return last ? core::to_channels_last(t) : t;
  };
  const auto nchw = [&](const Tensor& t) { return last ? core::to_channels_first(t) : t; };
  const auto x = rounded(normal_values(s.x_size(), rng), dtype), w = rounded(normal_values(s.w_size(), rng), dtype);
  const auto b = with_bias ? rounded(normal_values(s.c_out, rng), dtype) : std::vector<double>{};
  const auto dy = rounded(normal_values(s.y_size(), rng), dtype);
  const auto g0 = rounded(normal_values(s.w_size(), rng), dtype), gb0 = rounded(normal_values(s.c_out, rng), dtype);

  const Tensor y = core::conv2d(activation(x, xs_nchw), device_tensor(w, ws, dtype),
                                with_bias ? device_tensor(b, Shape{s.c_out}, dtype) : Tensor(), geometry(s, layout));
  REQUIRE(y.shape() == ys);
  check_sums(nchw(y), spec::conv2d(s, x, w, b), spec::conv2d(s, absolute(x), absolute(w), absolute(b)), dtype,
             "output");

  const Tensor dx =
      core::conv2d_backward_input(activation(dy, ys_nchw), device_tensor(w, ws, dtype), xs, geometry(s, layout));
  REQUIRE(dx.shape() == xs);
  check_sums(nchw(dx), spec::conv2d_grad_input(s, dy, w), spec::conv2d_grad_input(s, absolute(dy), absolute(w)), dtype,
             "input gradient");

  // The weight and bias gradients accumulate onto what the tensors hold.
  const Tensor dw = device_tensor(g0, ws, dtype);
  core::conv2d_backward_weight_(dw, activation(dy, ys_nchw), activation(x, xs_nchw), geometry(s, layout));
  std::vector<double> want_dw = spec::conv2d_grad_weight(s, dy, x), scale_dw = spec::conv2d_grad_weight(s, absolute(dy), absolute(x));
  for (std::size_t i = 0; i < want_dw.size(); ++i) {
    want_dw[i] += g0[i];
    scale_dw[i] += std::abs(g0[i]);
  }
  check_sums(dw, want_dw, scale_dw, dtype, "weight gradient");

  const Tensor db = device_tensor(gb0, Shape{s.c_out}, dtype);
  core::conv2d_backward_bias_(db, activation(dy, ys_nchw), layout);
  std::vector<double> want_db = spec::conv2d_grad_bias(s, dy), scale_db = spec::conv2d_grad_bias(s, absolute(dy));
  for (std::size_t i = 0; i < want_db.size(); ++i) {
    want_db[i] += gb0[i];
    scale_db[i] += std::abs(gb0[i]);
  }
  check_sums(db, want_db, scale_db, dtype, "bias gradient");
}

}  // namespace syncbn::testing
