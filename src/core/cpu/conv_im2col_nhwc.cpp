// The im2col engine on channels-last (NHWC) tensors.
//
// Note [Channels-last convolution on the CPU]
// In NHWC a pixel's channels are contiguous, so the lowering copies runs of
// C_in/g values: row l of `col` (one row per output position, L = oh * ow
// rows) holds, tap by tap, the channels each kernel tap (i, j) sees there,
// K = kH * kW * C_in/g columns ordered (i, j, c). The output is then one
// product per sample and group,
//   y_g (L x C_out/g, row stride C_out) = col (L x K) * wt_g^T,
// written straight into the NHWC output, with wt the weight reordered to
// (C_out, kH, kW, C_in/g) once per call: the weight stays in PyTorch's
// (C_out, C_in/g, kH, kW) everywhere else (checkpoints, optimizers), and the
// reorder reads K * C_out values where the product does L times more work.
// The input gradient is col = dy_g * wt_g scattered back (adding where
// windows overlap), the weight gradient wt_g += dy_g^T * col, reordered back
// into dweight. A 1x1 kernel with stride 1 and no padding needs no lowering:
// the whole batch is one (N * L x C_in) matrix, one product per group.

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "cpu/conv_im2col.hpp"

#include "backend/dispatch.hpp"

namespace syncbn::cpu::im2col {
namespace {

using core::detail::Conv2dShape;

struct Sizes {
  std::int64_t cin, cout, taps, k, l;  // per group: input and output channels; kH * kW; K; L
  bool lower;
};

Sizes sizes_of(const Conv2dShape& s) {
  const std::int64_t cin = s.c_in / s.groups, taps = s.kh * s.kw;
  const bool lower = !(taps == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0);
  return {cin, s.c_out / s.groups, taps, taps * cin, s.oh * s.ow, lower};
}

// Samples per product when the whole batch is one matrix: the BLAS takes
// int row counts.
std::int64_t samples_per_product(const Conv2dShape& s, std::int64_t l) {
  return std::max<std::int64_t>(1, std::min<std::int64_t>(s.n, INT_MAX / std::max<std::int64_t>(l, 1)));
}

// The weight (C_out, cin, kH, kW) as (C_out, kH, kW, cin), and back (added).
template <class T>
void weight_to_taps(const Conv2dShape& s, const Sizes& z, const T* w, T* wt) {
  for (std::int64_t o = 0; o < s.c_out; ++o)
    for (std::int64_t c = 0; c < z.cin; ++c)
      for (std::int64_t t = 0; t < z.taps; ++t) wt[(o * z.taps + t) * z.cin + c] = w[(o * z.cin + c) * z.taps + t];
}

template <class T>
void add_taps_to_weight(const Conv2dShape& s, const Sizes& z, const T* wt, T* w) {
  for (std::int64_t o = 0; o < s.c_out; ++o)
    for (std::int64_t c = 0; c < z.cin; ++c)
      for (std::int64_t t = 0; t < z.taps; ++t) w[(o * z.cin + c) * z.taps + t] += wt[(o * z.taps + t) * z.cin + c];
}

// The weight in tap order: the weight itself for a 1x1 kernel.
template <class T>
const T* taps_of(const Conv2dShape& s, const Sizes& z, const T* w, std::vector<T>& storage) {
  if (z.taps == 1) return w;
  storage.resize(static_cast<std::size_t>(s.c_out * z.k));
  weight_to_taps(s, z, w, storage.data());
  return storage.data();
}

// Calls visit(iy, ix, tap) for every tap of output position (oy, ox), with
// (iy, ix) the input pixel it reads (possibly in the padding).
template <class Visit>
void for_each_tap(const Conv2dShape& s, std::int64_t oy, std::int64_t ox, const Visit& visit) {
  for (std::int64_t i = 0; i < s.kh; ++i) {
    const std::int64_t iy = oy * s.stride_h - s.pad_h + i * s.dilation_h;
    for (std::int64_t j = 0; j < s.kw; ++j) visit(iy, ox * s.stride_w - s.pad_w + j * s.dilation_w, i * s.kw + j);
  }
}

bool inside(const Conv2dShape& s, std::int64_t iy, std::int64_t ix) { return iy >= 0 && iy < s.h && ix >= 0 && ix < s.w; }

// col (L x K) for the group whose first channel x points at (one sample,
// pixel rows of c_in values).
template <class T>
void lower(const Conv2dShape& s, const Sizes& z, const T* x, T* col) {
  for (std::int64_t oy = 0; oy < s.oh; ++oy) {
    for (std::int64_t ox = 0; ox < s.ow; ++ox) {
      T* row = col + (oy * s.ow + ox) * z.k;
      for_each_tap(s, oy, ox, [&](std::int64_t iy, std::int64_t ix, std::int64_t tap) {
        T* out = row + tap * z.cin;
        if (inside(s, iy, ix)) {
          const T* in = x + (iy * s.w + ix) * s.c_in;
          std::copy(in, in + z.cin, out);
        } else {
          std::fill(out, out + z.cin, T(0));
        }
      });
    }
  }
}

// The inverse scatter: dx (one sample's group, zeroed by the caller) += col.
template <class T>
void lower_back(const Conv2dShape& s, const Sizes& z, const T* col, T* dx) {
  for (std::int64_t oy = 0; oy < s.oh; ++oy) {
    for (std::int64_t ox = 0; ox < s.ow; ++ox) {
      const T* row = col + (oy * s.ow + ox) * z.k;
      for_each_tap(s, oy, ox, [&](std::int64_t iy, std::int64_t ix, std::int64_t tap) {
        if (!inside(s, iy, ix)) return;
        const T* in = row + tap * z.cin;
        T* out = dx + (iy * s.w + ix) * s.c_in;
        for (std::int64_t c = 0; c < z.cin; ++c) out[c] += in[c];
      });
    }
  }
}

template <class T>
void forward_typed(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  const Sizes z = sizes_of(s);
  std::vector<T> storage;
  const T* wt = taps_of(s, z, w, storage);
  if (bias != nullptr)
    for (std::int64_t r = 0; r < s.n * z.l; ++r) std::copy(bias, bias + s.c_out, y + r * s.c_out);
  const T beta = bias != nullptr ? T(1) : T(0);
  if (!z.lower) {
    const std::int64_t per = samples_per_product(s, z.l);
    for (std::int64_t n0 = 0; n0 < s.n; n0 += per) {
      const std::int64_t rows = std::min(per, s.n - n0) * z.l;
      for (std::int64_t grp = 0; grp < s.groups; ++grp)
        gemm<T>("conv2d", false, true, rows, z.cout, z.cin, x + n0 * z.l * s.c_in + grp * z.cin, s.c_in,
                wt + grp * z.cout * z.k, z.k, beta, y + n0 * z.l * s.c_out + grp * z.cout, s.c_out);
    }
    return;
  }
  std::vector<T> col(static_cast<std::size_t>(z.l * z.k));
  for (std::int64_t n = 0; n < s.n; ++n) {
    for (std::int64_t grp = 0; grp < s.groups; ++grp) {
      lower(s, z, x + n * s.h * s.w * s.c_in + grp * z.cin, col.data());
      gemm<T>("conv2d", false, true, z.l, z.cout, z.k, col.data(), z.k, wt + grp * z.cout * z.k, z.k, beta,
              y + n * z.l * s.c_out + grp * z.cout, s.c_out);
    }
  }
}

template <class T>
void backward_input_typed(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  const Sizes z = sizes_of(s);
  std::vector<T> storage;
  const T* wt = taps_of(s, z, w, storage);
  if (!z.lower) {
    const std::int64_t per = samples_per_product(s, z.l);
    for (std::int64_t n0 = 0; n0 < s.n; n0 += per) {
      const std::int64_t rows = std::min(per, s.n - n0) * z.l;
      for (std::int64_t grp = 0; grp < s.groups; ++grp)
        gemm<T>("conv2d_backward_input", false, false, rows, z.cin, z.cout, dy + n0 * z.l * s.c_out + grp * z.cout,
                s.c_out, wt + grp * z.cout * z.k, z.k, T(0), dx + n0 * z.l * s.c_in + grp * z.cin, s.c_in);
    }
    return;
  }
  std::fill(dx, dx + s.n * s.h * s.w * s.c_in, T(0));
  std::vector<T> col(static_cast<std::size_t>(z.l * z.k));
  for (std::int64_t n = 0; n < s.n; ++n) {
    for (std::int64_t grp = 0; grp < s.groups; ++grp) {
      gemm<T>("conv2d_backward_input", false, false, z.l, z.k, z.cout, dy + n * z.l * s.c_out + grp * z.cout, s.c_out,
              wt + grp * z.cout * z.k, z.k, T(0), col.data(), z.k);
      lower_back(s, z, col.data(), dx + n * s.h * s.w * s.c_in + grp * z.cin);
    }
  }
}

template <class T>
void backward_weight_typed(const Conv2dShape& s, const T* dy, const T* x, T* dw) {
  const Sizes z = sizes_of(s);
  // A 1x1 kernel accumulates into dw itself; others into a zeroed weight in
  // tap order, added back at the end.
  std::vector<T> taps(z.taps == 1 ? 0 : static_cast<std::size_t>(s.c_out * z.k), T(0));
  T* target = z.taps == 1 ? dw : taps.data();
  if (!z.lower) {
    const std::int64_t per = samples_per_product(s, z.l);
    for (std::int64_t n0 = 0; n0 < s.n; n0 += per) {
      const std::int64_t rows = std::min(per, s.n - n0) * z.l;
      for (std::int64_t grp = 0; grp < s.groups; ++grp)
        gemm<T>("conv2d_backward_weight", true, false, z.cout, z.cin, rows, dy + n0 * z.l * s.c_out + grp * z.cout,
                s.c_out, x + n0 * z.l * s.c_in + grp * z.cin, s.c_in, T(1), target + grp * z.cout * z.k, z.k);
    }
  } else {
    std::vector<T> col(static_cast<std::size_t>(z.l * z.k));
    for (std::int64_t n = 0; n < s.n; ++n) {
      for (std::int64_t grp = 0; grp < s.groups; ++grp) {
        lower(s, z, x + n * s.h * s.w * s.c_in + grp * z.cin, col.data());
        gemm<T>("conv2d_backward_weight", true, false, z.cout, z.k, z.l, dy + n * z.l * s.c_out + grp * z.cout,
                s.c_out, col.data(), z.k, T(1), target + grp * z.cout * z.k, z.k);
      }
    }
  }
  if (z.taps != 1) add_taps_to_weight(s, z, taps.data(), dw);
}

}  // namespace

void conv_forward_nhwc(DType dtype, const Conv2dShape& s, const void* x, const void* w, const void* bias, void* y) {
  core::detail::dispatch_floating(dtype, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    forward_typed<T>(s, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
                     static_cast<T*>(y));
  });
}

void conv_backward_input_nhwc(DType dtype, const Conv2dShape& s, const void* dy, const void* w, void* dx) {
  core::detail::dispatch_floating(dtype, "conv2d_backward_input", [&](auto tag) {
    using T = decltype(tag);
    backward_input_typed<T>(s, static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx));
  });
}

void conv_backward_weight_nhwc(DType dtype, const Conv2dShape& s, const void* dy, const void* x, void* dw) {
  core::detail::dispatch_floating(dtype, "conv2d_backward_weight", [&](auto tag) {
    using T = decltype(tag);
    backward_weight_typed<T>(s, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dw));
  });
}

}  // namespace syncbn::cpu::im2col
