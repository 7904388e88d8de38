// CPU backend: batch-norm kernels, tuned (vector blocks, float64 lanes,
// folded per-channel terms; the machinery in cpu/batch_norm_vectors.hpp),
// one entry function per layout (rows: (N, C) and channels-last; planes:
// channels-first (N, C, L)), compiled once per CPU level. Their
// specification is tests/support/batch_norm_spec.hpp, and docs/numerics.md
// gives the numerical choices (shifted sums, float64 accumulation, Chan
// merges, the hi/lo mean) and the accuracy every stage is tested to.

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/dispatch.hpp"
#include "cpu/batch_norm_vectors.hpp"
#include "cpu/cpu_kernels.hpp"
#include "cpu/scratch.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

// ---- statistics: sums of values shifted by each channel's first ------------

// Rows: (N, C) input and channels-last (N * L, C).
template <class T>
void shifted_sums_rows(DType dtype, std::int64_t n, std::int64_t c, const void* x, const T* shift, double* s,
                       double* ss) {
  if (dtype == DType::Float32 || dtype == DType::Float64) {
    const T* xs = static_cast<const T*>(x);
    const std::int64_t done = column_shifted_sums<T>(xs, n, c, shift, s, ss);
    for (std::int64_t j = done; j < c; ++j)
      for (std::int64_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(xs[i * c + j]) - static_cast<double>(shift[j]);
        s[j] += d;
        ss[j] += d * d;
      }
    return;
  }
  // 16-bit input: rows staged as float32, added row by row into the float64
  // sums; a row wider than the staging chunk arrives in pieces.
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t done = 0;
    for_runs<T>(x, dtype, i * c, c, [&](const T* row, std::int64_t len) {
      row_shifted_sums(row, shift + done, s + done, ss + done, len);
      done += len;
    });
  }
}

// Planes: channels-first (N, C, L), L > 1. One accumulator set per channel,
// the tensor read in memory order: a channel-by-channel walk reads runs of l
// values a sample apart, which ran at two thirds of the sequential read rate
// (32x64x56x56). Each channel still adds its runs in sample order, so the
// sums are the same.
template <class T>
void shifted_sums_planes(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x, const T* shift,
                         double* s, double* ss) {
  std::vector<MomentSums<T>> sums(static_cast<std::size_t>(c));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      for_runs<T>(x, dtype, (i * c + j) * l, l, [&](const T* p, std::int64_t len) {
        shifted_sums<T>(p, len, shift[j], sums[static_cast<std::size_t>(j)]);
      });
  for (std::int64_t j = 0; j < c; ++j) {
    auto& sum = sums[static_cast<std::size_t>(j)];
    sum.flush();
    s[j] = sum.sum[0];
    ss[j] = sum.sum[1];
  }
}

// ---- kernels ----------------------------------------------------------------------

void cpu_stats(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               double* mean, double* m2) {
  const std::int64_t count = n * l;
  if (count == 0) {
    std::fill(mean, mean + c, 0.0);
    std::fill(m2, m2 + c, 0.0);
    return;
  }
  const ScratchScope scratch;
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto channels = static_cast<std::size_t>(c);
    double* const s = ScratchScope::take<double>(channels);
    double* const ss = ScratchScope::take<double>(channels);
    T* const shift = ScratchScope::take<T>(channels);
    std::fill(s, s + c, 0.0);
    std::fill(ss, ss + c, 0.0);
    const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
    for (std::int64_t j = 0; j < c; ++j) {
      auto& first = shift[static_cast<std::size_t>(j)];
      if (direct) first = static_cast<const T*>(x)[j * l];
      else for_runs<T>(x, dtype, j * l, 1, [&](const T* p, std::int64_t) { first = p[0]; });
    }
    if (l == 1)
      shifted_sums_rows<T>(dtype, n, c, x, shift, s, ss);
    else
      shifted_sums_planes<T>(dtype, n, c, l, x, shift, s, ss);
    const double per = 1.0 / static_cast<double>(count);  // one division, not one per channel
    for (std::int64_t j = 0; j < c; ++j) {
      const auto u = static_cast<std::size_t>(j);
      const double local = s[u] * per;
      mean[j] = static_cast<double>(shift[u]) + local;
      // Rounding can leave a constant channel's m2 slightly below 0; a NaN
      // stays NaN (std::max(0.0, m2) would turn it into 0).
      const double v = ss[u] - s[u] * local;
      m2[j] = v < 0 ? 0.0 : v;
    }
    redo_overflowed_stats<T>(dtype, n, c, l, x, mean, m2);
  });
}

void cpu_merge_stats(Device /*device*/, std::int64_t c, int parts, const std::int64_t* counts,
                     const double* const* means, const double* const* m2s, double* mean, double* m2) {
  // Chan's update, part by part in replica order. The weights depend on the
  // counts only (the same for every channel), so they are computed once per
  // part and the channel loops vectorise; this runs on the master while the
  // other replicas wait.
  // The first non-empty part is read in place until the first merge writes
  // the result (no copy of it).
  const double* cur_mean = nullptr;
  const double* cur_m2 = nullptr;
  double na = 0;
  for (int p = 0; p < parts; ++p) {
    if (counts[p] == 0) continue;
    const auto nb = static_cast<double>(counts[p]);
    const double* mb = means[p];
    const double* m2b = m2s[p];
    if (na == 0) {
      cur_mean = mb;
      cur_m2 = m2b;
      na = nb;
      continue;
    }
    const double total = na + nb;
    const double w_mean = nb / total, w_m2 = na * nb / total;
    for (std::int64_t j = 0; j < c; ++j) {
      const double delta = mb[j] - cur_mean[j];
      mean[j] = cur_mean[j] + delta * w_mean;
      m2[j] = cur_m2[j] + (m2b[j] + delta * delta * w_m2);
    }
    cur_mean = mean;
    cur_m2 = m2;
    na = total;
  }
  if (na == 0) {
    std::fill(mean, mean + c, 0.0);
    std::fill(m2, m2 + c, 0.0);
  } else if (cur_mean != mean) {  // one non-empty part
    std::copy(cur_mean, cur_mean + c, mean);
    std::copy(cur_m2, cur_m2 + c, m2);
  }
}

void cpu_finalize(Device /*device*/, std::int64_t c, std::int64_t count, const double* m2, double eps, bool eps_clamp,
                  double* invstd, double* unbiased_var) {
  // Reciprocals of the counts once: this runs on the master while the other
  // replicas wait, and three float64 divisions per channel were most of it
  // (the results differ from divisions by at most an ulp of float64).
  const double per = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
  const double per_unbiased = count > 1 ? 1.0 / static_cast<double>(count - 1) : 0.0;
  for (std::int64_t j = 0; j < c; ++j) {
    const double var = m2[j] * per;
    invstd[j] = 1.0 / std::sqrt(eps_clamp ? std::max(var, eps) : var + eps);
    unbiased_var[j] = m2[j] * per_unbiased;
  }
}

void cpu_update_running(Device /*device*/, DType param_dtype, std::int64_t c, double momentum, const double* mean,
                        const double* unbiased_var, void* running_mean, void* running_var,
                        std::int64_t* num_batches_tracked) {
  const std::int64_t batches = ++*num_batches_tracked;
  const double factor = momentum < 0 ? 1.0 / static_cast<double>(batches) : momentum;
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    auto* rm = static_cast<P*>(running_mean);
    auto* rv = static_cast<P*>(running_var);
    // Factor 1 (momentum 1, or the first batch of a cumulative average) takes
    // the batch's value: an infinite old value times 1 - factor = 0 is NaN.
    const bool replace = factor == 1.0;
    for (std::int64_t j = 0; j < c; ++j) {
      rm[j] = static_cast<P>(replace ? mean[j] : (1.0 - factor) * static_cast<double>(rm[j]) + factor * mean[j]);
      rv[j] = static_cast<P>(replace ? unbiased_var[j]
                                     : (1.0 - factor) * static_cast<double>(rv[j]) + factor * unbiased_var[j]);
    }
  });
}

void cpu_renorm_factors(Device /*device*/, DType param_dtype, std::int64_t c, const double* mean, const double* invstd,
                        const void* running_mean, const void* running_var, double eps, bool eps_clamp, double rmax,
                        double dmax, double* r, double* d) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* rm = static_cast<const P*>(running_mean);
    const auto* rv = static_cast<const P*>(running_var);
    for (std::int64_t j = 0; j < c; ++j) {
      // The running standard deviation as eval mode would use it.
      const double var = static_cast<double>(rv[j]);
      const double sigma = std::sqrt(eps_clamp ? std::max(var, eps) : var + eps);
      r[j] = std::clamp(1.0 / (invstd[j] * sigma), 1.0 / rmax, rmax);
      d[j] = std::clamp((mean[j] - static_cast<double>(rm[j])) / sigma, -dmax, dmax);
    }
  });
}

void cpu_forward_coefficients(Device /*device*/, DType param_dtype, std::int64_t c, const double* mean,
                              const double* invstd, const void* weight, const void* bias, double* coef) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* w = static_cast<const P*>(weight);
    const auto* b = static_cast<const P*>(bias);
    double* hi = coef;
    double* lo = coef + c;
    double* scale = coef + 2 * c;
    double* shift = coef + 3 * c;
    for (std::int64_t j = 0; j < c; ++j) {
      // The hi/lo split rounds to the precision the apply kernel computes in.
      hi[j] = static_cast<double>(static_cast<P>(mean[j]));
      lo[j] = static_cast<double>(static_cast<P>(mean[j] - hi[j]));
    }
    for (std::int64_t j = 0; j < c; ++j) scale[j] = invstd[j] * (w != nullptr ? static_cast<double>(w[j]) : 1.0);
    for (std::int64_t j = 0; j < c; ++j) shift[j] = b != nullptr ? static_cast<double>(b[j]) : 0.0;
  });
}

// Apply over rows: (N, C) input and channels-last. Element-wise work
// streams row by row (the coefficient table stays in L1); measured faster
// than column blocks, which suit the reductions. `out_run(offset, len,
// compute)` writes a computed run (in place, or converted to 16 bits).
// `mask`: the relu mask to write, or null.
template <ActivationKind K, class T, class OutRun>
void apply_rows(bool direct, std::int64_t n, std::int64_t c, const void* x, const double* coef, T alpha, void* y,
                OutRun&& out_run, DType dtype, std::uint8_t* mask) {
  const ForwardCoef f(coef, c);
  const ForwardTable<T> table(c, [&](std::int64_t j, auto q) { return forward_term<T, decltype(q)::value>(f, j); });
  const std::int64_t mask_row = core::detail::relu_mask_run_bytes(c, 1);
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint8_t* const row_mask = mask != nullptr ? mask + i * mask_row : nullptr;
    if (direct) {
      row_normalize<K>(static_cast<const T*>(x) + i * c, static_cast<T*>(y) + i * c, 0, c, table, alpha, row_mask);
      continue;
    }
    std::int64_t done = 0;
    for_runs<T>(x, dtype, i * c, c, [&](const T* row, std::int64_t len) {
      // done is a multiple of the chunk, so each run starts on a mask byte.
      std::uint8_t* const run_mask = row_mask != nullptr ? row_mask + done / 8 : nullptr;
      out_run(i * c + done, len, [&](T* out) { row_normalize<K>(row, out, done, len, table, alpha, run_mask); });
      done += len;
    });
  }
}

// Apply over planes: channels-first (N, C, L), run by run.
template <ActivationKind K, class T, class OutRun>
void apply_planes(std::int64_t n, std::int64_t c, std::int64_t l, const void* x, const double* coef, T alpha,
                  OutRun&& out_run, DType dtype, std::uint8_t* mask) {
  const ForwardCoef f(coef, c);
  const std::int64_t mask_run = core::detail::relu_mask_run_bytes(c, l);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const auto terms = forward_terms<T>(f, j);
      std::int64_t done = 0;
      const std::int64_t base = (i * c + j) * l;
      std::uint8_t* const plane_mask = mask != nullptr ? mask + (i * c + j) * mask_run : nullptr;
      for_runs<T>(x, dtype, base, l, [&](const T* p, std::int64_t len) {
        std::uint8_t* const run_mask = plane_mask != nullptr ? plane_mask + done / 8 : nullptr;
        out_run(base + done, len, [&](T* out) { normalize_run<K, T>(p, out, len, terms, alpha, run_mask); });
        done += len;
      });
    }
}

void apply_kernel(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               const double* coef, const BatchNormFusion& fusion, void* y) {
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_fusion(fusion, [&](auto kind, auto, auto masked) {
      constexpr ActivationKind K = decltype(kind)::value;
      const T alpha = static_cast<T>(fusion.alpha);
      std::uint8_t* const mask = decltype(masked)::value && kMaskable<T> ? fusion.relu_mask : nullptr;
      const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
      std::vector<T> out_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
      // Writes a computed run: in place for float32/float64, converted otherwise.
      auto out_run = [&](std::int64_t offset, std::int64_t len, auto&& compute) {
        if (direct) {
          compute(static_cast<T*>(y) + offset);
        } else {
          compute(out_buffer.data());
          from_float(y, dtype, offset, reinterpret_cast<const float*>(out_buffer.data()), len);
        }
      };
      if (l == 1)
        apply_rows<K, T>(direct, n, c, x, coef, alpha, y, out_run, dtype, mask);
      else
        apply_planes<K, T>(n, c, l, x, coef, alpha, out_run, dtype, mask);
    });
  });
}

// sum(dz * (x - mean)) and sum(x - mean) from sum(dz * x) and sum(x), which
// add_grad_terms accumulates from x (the mean in float64 as hi + lo);
// before the redo of channels whose sums are not finite, which computes the
// centred sums itself.
template <bool FromOutput>
void center_gradient_sums(std::int64_t c, std::int64_t count, const double* coef, const double* sum_dy,
                          double* sum_dy_xmu, double* sum_xmu) {
  if constexpr (!FromOutput) {
    const ForwardCoef f(coef, c);
    const auto values = static_cast<double>(count);
    for (std::int64_t j = 0; j < c; ++j) {
      const double mean = f.hi[j] + f.lo[j];
      sum_dy_xmu[j] -= mean * sum_dy[j];
      sum_xmu[j] -= mean * values;
    }
  }
}

// The three sums of a kernel, as output pointers.
struct GradSumsOut {
  double* sum_dy;
  double* sum_dy_xmu;
  double* sum_xmu;
  GradSumsOut at(std::int64_t j) const { return {sum_dy + j, sum_dy_xmu + j, sum_xmu + j}; }
};

// Gradient sums over rows: (N, C) input and channels-last. `both(offset,
// len, fn)` calls fn(dy_run, x_run, len) over matching runs of dy and x.
// `mask`: the relu mask when Masked (K is then the identity).
template <ActivationKind K, bool FromOutput, class T, bool Masked, class Both>
void gradient_sums_rows(bool direct, std::int64_t n, std::int64_t c, const void* dy, const void* x,
                        const double* coef, T alpha, const GradSumsOut& out, Both&& both, const std::uint8_t* mask) {
  const ChannelColumns<T> cols(coef, c);
  const std::int64_t mask_row = core::detail::relu_mask_run_bytes(c, 1);
  if (direct) {
    const T* gs = static_cast<const T*>(dy);
    const T* xs = static_cast<const T*>(x);
    const std::int64_t done = column_gradient_sums<K, FromOutput, T, Masked>(gs, xs, n, c, cols, alpha, out.sum_dy,
                                                                             out.sum_dy_xmu, out.sum_xmu, mask);
    for (std::int64_t j = done; j < c; ++j) {
      const ChannelTerms<T> t = cols.at(j);
      for (std::int64_t i = 0; i < n; ++i)
        add_grad_terms<K, FromOutput>(grad_one<Masked>(gs + i * c, Masked ? mask + i * mask_row : nullptr, j),
                                      xs[i * c + j], t, alpha, out.sum_dy[j], out.sum_dy_xmu[j], out.sum_xmu[j],
                                      ToWide<T>{});
    }
    return;
  }
  const ChannelTerms<const T*> planes = cols.planes();
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t done = 0;
    both(i * c, c, [&](const T* g, const T* xp, std::int64_t len) {
      const ChannelTerms<const T*> at{planes.hi + done,          planes.lo + done,     planes.half_hi + done,
                                      planes.twice_scale + done, planes.offset + done, planes.shift + done};
      const GradSumsOut part = out.at(done);
      row_gradient_sums<K, FromOutput, T, Masked>(g, xp, len, at, alpha, part.sum_dy, part.sum_dy_xmu, part.sum_xmu,
                                                  Masked ? mask + i * mask_row + done / 8 : nullptr);
      done += len;
    });
  }
}

// Gradient sums over planes: channels-first (N, C, L), in memory order with
// one accumulator set per channel, as the statistics.
template <ActivationKind K, bool FromOutput, class T, bool Masked, class Both>
void gradient_sums_planes(std::int64_t n, std::int64_t c, std::int64_t l, const double* coef, T alpha,
                          const GradSumsOut& out, Both&& both, const std::uint8_t* mask) {
  std::vector<GradLaneSums<T>> sums(static_cast<std::size_t>(c));
  const ForwardCoef f(coef, c);
  const std::int64_t mask_run = core::detail::relu_mask_run_bytes(c, l);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const ChannelTerms<T> t = channel_terms<T>(f, j);
      auto& sum = sums[static_cast<std::size_t>(j)];
      std::int64_t done = 0;
      both((i * c + j) * l, l, [&](const T* g, const T* xp, std::int64_t len) {
        gradient_sums<K, FromOutput, T, Masked>(g, xp, len, t, alpha, sum,
                                                Masked ? mask + (i * c + j) * mask_run + done / 8 : nullptr);
        done += len;
      });
    }
  for (std::int64_t j = 0; j < c; ++j) {
    auto& sum = sums[static_cast<std::size_t>(j)];
    sum.flush();
    out.sum_dy[j] = sum.sum[0];
    out.sum_dy_xmu[j] = sum.sum[1];
    out.sum_xmu[j] = sum.sum[2];
  }
}

// The fast sums of cpu_backward_reduce (float64 lanes and partials for every
// dtype, Note [Gradient sums in float64]).
template <ActivationKind K, bool FromOutput, class T, bool Masked>
void fast_gradient_sums(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy, const void* x,
                        const double* coef, T alpha, const GradSumsOut& out, const std::uint8_t* mask) {
  std::fill(out.sum_dy, out.sum_dy + c, 0.0);
  std::fill(out.sum_dy_xmu, out.sum_dy_xmu + c, 0.0);
  std::fill(out.sum_xmu, out.sum_xmu + c, 0.0);
  const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
  std::vector<T> g_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
  auto both = [&](std::int64_t offset, std::int64_t len, auto&& fn) {
    if (direct) {
      fn(static_cast<const T*>(dy) + offset, static_cast<const T*>(x) + offset, len);
      return;
    }
    std::int64_t done = 0;
    for_runs<T>(x, dtype, offset, len, [&](const T* xp, std::int64_t run) {
      to_float(reinterpret_cast<float*>(g_buffer.data()), dy, dtype, offset + done, run);
      fn(g_buffer.data(), xp, run);
      done += run;
    });
  };
  if (l == 1)
    gradient_sums_rows<K, FromOutput, T, Masked>(direct, n, c, dy, x, coef, alpha, out, both, mask);
  else
    gradient_sums_planes<K, FromOutput, T, Masked>(n, c, l, coef, alpha, out, both, mask);
}

void cpu_backward_reduce(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l,
                         const void* dy, const void* x, const double* coef, const BatchNormFusion& fusion,
                         double* sum_dy, double* sum_dy_xmu, double* sum_xmu) {
  const ScratchScope scratch;
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_fusion(fusion, [&](auto kind, auto from_output, auto masked) {
      constexpr ActivationKind K = decltype(kind)::value;
      constexpr bool kFromOutput = decltype(from_output)::value;
      constexpr bool kMasked = decltype(masked)::value && kMaskable<T>;
      fast_gradient_sums<kBackwardKind<K, kMasked>, kFromOutput, T, kMasked>(
          dtype, n, c, l, dy, x, coef, static_cast<T>(fusion.alpha), GradSumsOut{sum_dy, sum_dy_xmu, sum_xmu},
          fusion.relu_mask);
      center_gradient_sums<kFromOutput>(c, n * l, coef, sum_dy, sum_dy_xmu, sum_xmu);
      redo_overflowed_gradient_sums<K, kFromOutput, T>(dtype, n, c, l, dy, x, coef, fusion.alpha, sum_dy, sum_dy_xmu,
                                                       sum_xmu);
      if constexpr (kFromOutput) {
        // u = (x - mean) * scale (Note [Fused activation]).
        const ForwardCoef f(coef, c);
        for (std::int64_t j = 0; j < c; ++j) {
          sum_dy_xmu[j] /= f.scale[j];
          sum_xmu[j] /= f.scale[j];
        }
      }
    });
  });
}

void cpu_backward_coefficients(Device /*device*/, DType param_dtype, std::int64_t c, std::int64_t count,
                               double clamp_eps, const double* invstd, const void* weight, const double* sum_dy,
                               const double* sum_dy_xmu, const double* sum_xmu, double* coef_b) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* w = static_cast<const P*>(weight);
    // count 0: statistics were constants (eval mode), so no batch terms.
    const double per = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    double* a = coef_b;
    double* b = coef_b + c;
    double* g = coef_b + 2 * c;
    // In clamp mode a channel whose variance was clamped to eps has
    // invstd = 1 / sqrt(eps), computed the same way: no gradient flows
    // through its variance (b = 0).
    const double clamped_invstd = clamp_eps > 0 ? 1.0 / std::sqrt(clamp_eps) : HUGE_VAL;
    for (std::int64_t j = 0; j < c; ++j) {
      // The exact mean is mean + e (Note [The exact mean from the backward]).
      const double e = sum_xmu != nullptr ? sum_xmu[j] * per : 0.0;
      b[j] = invstd[j] >= clamped_invstd ? 0.0 : (sum_dy_xmu[j] - e * sum_dy[j]) * per * invstd[j] * invstd[j];
      a[j] = sum_dy[j] * per - e * b[j];
    }
    for (std::int64_t j = 0; j < c; ++j) g[j] = invstd[j] * (w != nullptr ? static_cast<double>(w[j]) : 1.0);
  });
}

void cpu_accumulate_param_grads(Device /*device*/, DType param_dtype, std::int64_t c, const double* invstd,
                                const double* sum_dy, const double* sum_dy_xmu, const double* total_sum_xmu,
                                std::int64_t count, void* grad_weight, void* grad_bias) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    auto* gw = static_cast<P*>(grad_weight);
    auto* gb = static_cast<P*>(grad_bias);
    const double per = count > 0 && total_sum_xmu != nullptr ? 1.0 / static_cast<double>(count) : 0.0;
    if (gw != nullptr)
      for (std::int64_t j = 0; j < c; ++j) {
        const double e = per != 0 ? total_sum_xmu[j] * per : 0.0;
        gw[j] = static_cast<P>(static_cast<double>(gw[j]) + (sum_dy_xmu[j] - e * sum_dy[j]) * invstd[j]);
      }
    if (gb != nullptr)
      for (std::int64_t j = 0; j < c; ++j) gb[j] = static_cast<P>(static_cast<double>(gb[j]) + sum_dy[j]);
  });
}

// Backward apply over rows: (N, C) input and channels-last. `runs(offset,
// len, fn)` calls fn(dy_run, x_run, dx_run, len) over matching runs.
template <ActivationKind K, bool FromOutput, class T, bool Masked, class Runs>
void backward_apply_rows(std::int64_t n, std::int64_t c, const double* coef, const double* coef_b, T alpha,
                         Runs&& runs, const std::uint8_t* mask) {
  const std::int64_t mask_row = core::detail::relu_mask_run_bytes(c, 1);
  const ForwardCoef f(coef, c);
  const BackwardCoef bc(coef_b, c);
  const BackwardTable<T> table(
      c, [&](std::int64_t j, auto q) { return backward_term<decltype(q)::value, FromOutput>(f, bc, j); });
  const ChannelColumns<T> cols(coef, c);
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t done = 0;
    runs(i * c, c, [&](const T* g, const T* xp, T* out, std::int64_t len) {
      row_backward<K, FromOutput, T, Masked>(g, xp, out, done, len, cols.planes(), alpha, table,
                                             Masked ? mask + i * mask_row + done / 8 : nullptr);
      done += len;
    });
  }
}

// Backward apply over planes: channels-first (N, C, L), run by run.
template <ActivationKind K, bool FromOutput, class T, bool Masked, class Runs>
void backward_apply_planes(std::int64_t n, std::int64_t c, std::int64_t l, const double* coef, const double* coef_b,
                           T alpha, Runs&& runs, const std::uint8_t* mask) {
  const ForwardCoef f(coef, c);
  const BackwardCoef bc(coef_b, c);
  const std::int64_t mask_run = core::detail::relu_mask_run_bytes(c, l);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const auto terms = backward_terms<FromOutput>(f, bc, j);
      const ChannelTerms<T> ct = channel_terms<T>(f, j);
      std::int64_t done = 0;
      runs((i * c + j) * l, l, [&](const T* gp, const T* xp, T* out, std::int64_t len) {
        backward_run<K, FromOutput, T, Masked>(gp, xp, out, len, ct, alpha, terms,
                                               Masked ? mask + (i * c + j) * mask_run + done / 8 : nullptr);
        done += len;
      });
    }
}

void backward_apply_kernel(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l,
                        const void* dy, const void* x, const double* coef, const double* coef_b,
                        const BatchNormFusion& fusion, void* dx) {
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_fusion(fusion, [&](auto kind, auto from_output, auto masked) {
      constexpr bool kMasked = decltype(masked)::value && kMaskable<T>;
      constexpr ActivationKind K = kBackwardKind<decltype(kind)::value, kMasked>;
      constexpr bool kFromOutput = decltype(from_output)::value;
      const T alpha = static_cast<T>(fusion.alpha);
      const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
      std::vector<T> g_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
      std::vector<T> out_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
      // Calls fn(dy_run, x_run, dx_run, len) over matching runs.
      auto runs = [&](std::int64_t offset, std::int64_t len, auto&& fn) {
        if (direct) {
          fn(static_cast<const T*>(dy) + offset, static_cast<const T*>(x) + offset, static_cast<T*>(dx) + offset, len);
          return;
        }
        std::int64_t done = 0;
        for_runs<T>(x, dtype, offset, len, [&](const T* xp, std::int64_t run) {
          to_float(reinterpret_cast<float*>(g_buffer.data()), dy, dtype, offset + done, run);
          fn(g_buffer.data(), xp, out_buffer.data(), run);
          from_float(dx, dtype, offset + done, reinterpret_cast<const float*>(out_buffer.data()), run);
          done += run;
        });
      };
      if (l == 1)
        backward_apply_rows<K, kFromOutput, T, kMasked>(n, c, coef, coef_b, alpha, runs, fusion.relu_mask);
      else
        backward_apply_planes<K, kFromOutput, T, kMasked>(n, c, l, coef, coef_b, alpha, runs, fusion.relu_mask);
    });
  });
}

// Note [Folded rows]
// The element-wise kernels sweep (N, C) input a row at a time. Narrow rows
// (channels-last input of few channels: 32 float32 channels are 128 B) then
// spend their time restarting the sweep, so R consecutive rows are read as
// one row of R * C channels (at least 512 B, whole vector blocks) over
// coefficients repeated R times; the rows left over go through as they are.
// 8x32x16x32x32 channels-last forward+backward: 1.09-1.10x its
// channels-first time, against 1.13-1.14x row by row. (Folding the
// reductions as well, with the R results per channel merged, measured
// 1.5-1.7x slower: their column tiles already span many rows.)

// R for n rows of c elements of dtype (l == 1), or 0 to read them as they are.
// A relu mask is kept per row of c (Note [The relu mask] in
// core/batch_norm.cpp): folded rows keep its layout only where c fills
// whole mask bytes.
std::int64_t fold_factor(std::int64_t n, std::int64_t c, std::int64_t l, DType dtype, const BatchNormFusion& fusion) {
  const auto size = static_cast<std::int64_t>(dtype_size(dtype));
  if (l != 1 || c <= 0 || c * size >= 512) return 0;
  if (fusion.relu_mask != nullptr && c % 8 != 0) return 0;
  constexpr std::int64_t kBlockChannels = 32;  // whole 4-vector blocks of float32 lanes, two of float64
  std::int64_t r = 1;
  while (r * c * size < 512 || (r * c) % kBlockChannels != 0) ++r;
  return n >= 2 * r ? r : 0;
}

// `planes` planes of c doubles, each repeated r times (scratch of the
// caller's ScratchScope).
const double* repeat_planes(const double* coef, std::int64_t c, int planes, std::int64_t r) {
  double* const out = ScratchScope::take<double>(static_cast<std::size_t>(planes * r * c));
  for (int p = 0; p < planes; ++p)
    for (std::int64_t k = 0; k < r; ++k) std::copy(coef + p * c, coef + (p + 1) * c, out + (p * r + k) * c);
  return out;
}

// fusion with its relu mask (if any) from element `elements` of rows whose
// width fills whole mask bytes.
BatchNormFusion mask_from(BatchNormFusion fusion, std::int64_t elements) {
  if (fusion.relu_mask != nullptr) fusion.relu_mask += elements / 8;
  return fusion;
}

const void* offset_rows(const void* p, DType dtype, std::int64_t elements) {
  return static_cast<const char*>(p) + elements * static_cast<std::int64_t>(dtype_size(dtype));
}
void* offset_rows(void* p, DType dtype, std::int64_t elements) {
  return static_cast<char*>(p) + elements * static_cast<std::int64_t>(dtype_size(dtype));
}

void cpu_apply(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               const double* coef, const BatchNormFusion& fusion, void* y) {
  const ScratchScope scratch;
  const std::int64_t r = fold_factor(n, c, l, dtype, fusion);
  if (r == 0) {
    apply_kernel(device, dtype, n, c, l, x, coef, fusion, y);
    return;
  }
  const std::int64_t wide = n / r, done = wide * r * c;
  apply_kernel(device, dtype, wide, r * c, 1, x, repeat_planes(coef, c, 4, r), fusion, y);
  apply_kernel(device, dtype, n - wide * r, c, 1, offset_rows(x, dtype, done), coef, mask_from(fusion, done),
               offset_rows(y, dtype, done));
}

void cpu_backward_apply(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                        const void* x, const double* coef, const double* coef_b, const BatchNormFusion& fusion,
                        void* dx) {
  const ScratchScope scratch;
  const std::int64_t r = fold_factor(n, c, l, dtype, fusion);
  if (r == 0) {
    backward_apply_kernel(device, dtype, n, c, l, dy, x, coef, coef_b, fusion, dx);
    return;
  }
  const std::int64_t wide = n / r, done = wide * r * c;
  backward_apply_kernel(device, dtype, wide, r * c, 1, dy, x, repeat_planes(coef, c, 4, r),
                        repeat_planes(coef_b, c, 3, r), fusion, dx);
  backward_apply_kernel(device, dtype, n - wide * r, c, 1, offset_rows(dy, dtype, done), offset_rows(x, dtype, done),
                        coef, coef_b, mask_from(fusion, done), offset_rows(dx, dtype, done));
}

}  // namespace

const core::detail::BatchNormKernels kBatchNormKernels{
    cpu_stats,           cpu_merge_stats,           cpu_finalize,
    cpu_update_running,  cpu_renorm_factors,        cpu_forward_coefficients,  cpu_apply,
    cpu_backward_reduce, cpu_backward_coefficients, cpu_accumulate_param_grads,
    cpu_backward_apply};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
