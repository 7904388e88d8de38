// CPU backend: batch-norm kernels (the specification of the CUDA kernels).
//
// Note [Batch-norm numerics]
// Naive float32 sum and sum of squares lose every significant digit of the
// variance once |mean| >> std (at mean = 1e4 * std the squares agree in their
// first 8 digits). syncbn therefore:
//  * accumulates in float64, over values shifted by the channel's first
//    element of the shard (x - x0 is of the order of std, so the shifted sum of
//    squares carries no cancellation), and sends per-channel
//    (count, mean, M2 = sum of squared deviations) partials, not raw sums;
//  * merges partials with Chan et al.'s pairwise update in replica order, which
//    is exact to rounding whatever the shards' means;
//  * normalises with mean split into mean_hi = float(mean) and mean_lo =
//    float(mean - mean_hi): (x - mean_hi) is exact when x is near the mean
//    (Sterbenz), so float32 arithmetic keeps full relative accuracy of
//    x - mean where a single float mean would be off by up to ulp(1e4) = 1e-3.
// Accumulators run in several lanes so that the compiler can vectorize the
// float64 sums; the lane order is fixed, so results are deterministic.
// Counts are integers (int64) whatever the dtype.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/dispatch.hpp"
#include "cpu/cpu_kernels.hpp"
#include "cpu/half_float.hpp"
#include "syncbn/error.hpp"

namespace syncbn::detail {
namespace {

// Element access of each input dtype; arithmetic runs in Compute.
template <class Storage, class ComputeT>
struct Plain {
  using Stored = Storage;
  using Compute = ComputeT;
  static Compute load(const Stored* p, std::int64_t i) { return p[i]; }
  static void store(Stored* p, std::int64_t i, Compute v) { p[i] = v; }
};

struct Half {
  using Stored = std::uint16_t;
  using Compute = float;
  static float load(const Stored* p, std::int64_t i) { return half_to_float(p[i]); }
  static void store(Stored* p, std::int64_t i, float v) { p[i] = float_to_half(v); }
};

struct BFloat {
  using Stored = std::uint16_t;
  using Compute = float;
  static float load(const Stored* p, std::int64_t i) { return bfloat16_to_float(p[i]); }
  static void store(Stored* p, std::int64_t i, float v) { p[i] = float_to_bfloat16(v); }
};

template <class Fn>
void dispatch_input(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: fn(Plain<float, float>{}); return;
    case DType::Float64: fn(Plain<double, double>{}); return;
    case DType::Float16: fn(Half{}); return;
    case DType::BFloat16: fn(BFloat{}); return;
    default: break;
  }
  SYNCBN_THROW(InvalidArgument, "batch_norm: dtype ", dtype_name(dtype),
               " is not supported, expected float32, float64, float16 or bfloat16");
}

constexpr std::int64_t kLanes = 16;

// Sums of (x - shift) and (x - shift)^2 over one contiguous run, into lanes.
template <class E>
void shifted_sums(const typename E::Stored* p, std::int64_t len, typename E::Compute shift, double* s, double* ss) {
  std::int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (std::int64_t j = 0; j < kLanes; ++j) {
      const double d = static_cast<double>(E::load(p, k + j) - shift);
      s[j] += d;
      ss[j] += d * d;
    }
  for (; k < len; ++k) {
    const double d = static_cast<double>(E::load(p, k) - shift);
    s[0] += d;
    ss[0] += d * d;
  }
}

double lane_total(const double* lanes) {
  double t = 0;
  for (std::int64_t j = 0; j < kLanes; ++j) t += lanes[j];
  return t;
}

void cpu_stats(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               double* mean, double* m2) {
  const std::int64_t count = n * l;
  if (count == 0) {
    std::fill(mean, mean + c, 0.0);
    std::fill(m2, m2 + c, 0.0);
    return;
  }
  dispatch_input(dtype, [&](auto e) {
    using E = decltype(e);
    using C = typename E::Compute;
    const auto* xs = static_cast<const typename E::Stored*>(x);
    if (l == 1) {
      // (N, C): channels are contiguous within a row; accumulate per channel.
      std::vector<C> shift(static_cast<std::size_t>(c));
      std::vector<double> s(static_cast<std::size_t>(c), 0.0), ss(static_cast<std::size_t>(c), 0.0);
      for (std::int64_t j = 0; j < c; ++j) shift[static_cast<std::size_t>(j)] = E::load(xs, j);
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j) {
          const double d = static_cast<double>(E::load(xs, i * c + j) - shift[static_cast<std::size_t>(j)]);
          s[static_cast<std::size_t>(j)] += d;
          ss[static_cast<std::size_t>(j)] += d * d;
        }
      for (std::int64_t j = 0; j < c; ++j) {
        const auto u = static_cast<std::size_t>(j);
        const double local = s[u] / static_cast<double>(count);
        mean[j] = static_cast<double>(shift[u]) + local;
        m2[j] = std::max(0.0, ss[u] - s[u] * local);
      }
      return;
    }
    for (std::int64_t j = 0; j < c; ++j) {
      const C shift = E::load(xs, j * l);
      double s[kLanes] = {}, ss[kLanes] = {};
      for (std::int64_t i = 0; i < n; ++i) shifted_sums<E>(xs + (i * c + j) * l, l, shift, s, ss);
      const double st = lane_total(s), sst = lane_total(ss);
      const double local = st / static_cast<double>(count);
      mean[j] = static_cast<double>(shift) + local;
      m2[j] = std::max(0.0, sst - st * local);
    }
  });
}

void cpu_merge_stats(Device /*device*/, std::int64_t c, int parts, const std::int64_t* counts,
                     const double* const* means, const double* const* m2s, double* mean, double* m2) {
  for (std::int64_t j = 0; j < c; ++j) {
    double na = 0, mean_a = 0, m2_a = 0;
    for (int p = 0; p < parts; ++p) {
      const auto nb = static_cast<double>(counts[p]);
      if (counts[p] == 0) continue;
      if (na == 0) {
        na = nb;
        mean_a = means[p][j];
        m2_a = m2s[p][j];
        continue;
      }
      const double total = na + nb;
      const double delta = means[p][j] - mean_a;
      mean_a += delta * (nb / total);
      m2_a += m2s[p][j] + delta * delta * (na * nb / total);
      na = total;
    }
    mean[j] = mean_a;
    m2[j] = m2_a;
  }
}

void cpu_finalize(Device /*device*/, std::int64_t c, std::int64_t count, const double* m2, double eps, bool eps_clamp,
                  double* invstd, double* unbiased_var) {
  const auto n = static_cast<double>(count);
  for (std::int64_t j = 0; j < c; ++j) {
    const double var = count > 0 ? m2[j] / n : 0.0;
    invstd[j] = 1.0 / std::sqrt(eps_clamp ? std::max(var, eps) : var + eps);
    unbiased_var[j] = count > 1 ? m2[j] / (n - 1.0) : 0.0;
  }
}

void cpu_update_running(Device /*device*/, DType param_dtype, std::int64_t c, double momentum, const double* mean,
                        const double* unbiased_var, void* running_mean, void* running_var,
                        std::int64_t* num_batches_tracked) {
  const std::int64_t batches = ++*num_batches_tracked;
  const double factor = momentum < 0 ? 1.0 / static_cast<double>(batches) : momentum;
  dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    auto* rm = static_cast<P*>(running_mean);
    auto* rv = static_cast<P*>(running_var);
    for (std::int64_t j = 0; j < c; ++j) {
      rm[j] = static_cast<P>((1.0 - factor) * static_cast<double>(rm[j]) + factor * mean[j]);
      rv[j] = static_cast<P>((1.0 - factor) * static_cast<double>(rv[j]) + factor * unbiased_var[j]);
    }
  });
}

void cpu_forward_coefficients(Device /*device*/, DType param_dtype, std::int64_t c, const double* mean,
                              const double* invstd, const void* weight, const void* bias, double* coef) {
  dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* w = static_cast<const P*>(weight);
    const auto* b = static_cast<const P*>(bias);
    for (std::int64_t j = 0; j < c; ++j) {
      // The hi/lo split rounds to the precision the apply kernel computes in.
      const double hi = static_cast<double>(static_cast<P>(mean[j]));
      coef[4 * j + 0] = hi;
      coef[4 * j + 1] = static_cast<double>(static_cast<P>(mean[j] - hi));
      coef[4 * j + 2] = invstd[j] * (w != nullptr ? static_cast<double>(w[j]) : 1.0);
      coef[4 * j + 3] = b != nullptr ? static_cast<double>(b[j]) : 0.0;
    }
  });
}

void cpu_apply(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               const double* coef, void* y) {
  dispatch_input(dtype, [&](auto e) {
    using E = decltype(e);
    using C = typename E::Compute;
    const auto* xs = static_cast<const typename E::Stored*>(x);
    auto* ys = static_cast<typename E::Stored*>(y);
    if (l == 1) {
      std::vector<C> hi(static_cast<std::size_t>(c)), lo(hi.size()), scale(hi.size()), shift(hi.size());
      for (std::int64_t j = 0; j < c; ++j) {
        const auto u = static_cast<std::size_t>(j);
        hi[u] = static_cast<C>(coef[4 * j]);
        lo[u] = static_cast<C>(coef[4 * j + 1]);
        scale[u] = static_cast<C>(coef[4 * j + 2]);
        shift[u] = static_cast<C>(coef[4 * j + 3]);
      }
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j) {
          const auto u = static_cast<std::size_t>(j);
          E::store(ys, i * c + j, ((E::load(xs, i * c + j) - hi[u]) - lo[u]) * scale[u] + shift[u]);
        }
      return;
    }
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < c; ++j) {
        const C hi = static_cast<C>(coef[4 * j]), lo = static_cast<C>(coef[4 * j + 1]);
        const C scale = static_cast<C>(coef[4 * j + 2]), shift = static_cast<C>(coef[4 * j + 3]);
        const std::int64_t base = (i * c + j) * l;
        for (std::int64_t k = 0; k < l; ++k) E::store(ys, base + k, ((E::load(xs, base + k) - hi) - lo) * scale + shift);
      }
  });
}

void cpu_backward_reduce(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l,
                         const void* dy, const void* x, const double* coef, double* sum_dy, double* sum_dy_xmu) {
  dispatch_input(dtype, [&](auto e) {
    using E = decltype(e);
    using C = typename E::Compute;
    const auto* xs = static_cast<const typename E::Stored*>(x);
    const auto* gs = static_cast<const typename E::Stored*>(dy);
    for (std::int64_t j = 0; j < c; ++j) {
      const C hi = static_cast<C>(coef[4 * j]), lo = static_cast<C>(coef[4 * j + 1]);
      double s[kLanes] = {}, sx[kLanes] = {};
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t base = (i * c + j) * l;
        std::int64_t k = 0;
        for (; k + kLanes <= l; k += kLanes)
          for (std::int64_t q = 0; q < kLanes; ++q) {
            const C g = E::load(gs, base + k + q);
            const C xmu = (E::load(xs, base + k + q) - hi) - lo;
            s[q] += static_cast<double>(g);
            sx[q] += static_cast<double>(g * xmu);
          }
        for (; k < l; ++k) {
          const C g = E::load(gs, base + k);
          const C xmu = (E::load(xs, base + k) - hi) - lo;
          s[0] += static_cast<double>(g);
          sx[0] += static_cast<double>(g * xmu);
        }
      }
      sum_dy[j] = lane_total(s);
      sum_dy_xmu[j] = lane_total(sx);
    }
  });
}

void cpu_backward_coefficients(Device /*device*/, DType param_dtype, std::int64_t c, std::int64_t count,
                               const double* invstd, const void* weight, const double* sum_dy,
                               const double* sum_dy_xmu, const double* local_sum_dy, const double* local_sum_dy_xmu,
                               void* grad_weight, void* grad_bias, double* coef_b) {
  dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* w = static_cast<const P*>(weight);
    auto* gw = static_cast<P*>(grad_weight);
    auto* gb = static_cast<P*>(grad_bias);
    // count 0: statistics were constants (eval mode), so no batch terms.
    const double per = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    for (std::int64_t j = 0; j < c; ++j) {
      const double inv = invstd[j];
      coef_b[3 * j + 0] = sum_dy[j] * per;
      coef_b[3 * j + 1] = sum_dy_xmu[j] * per * inv * inv;
      coef_b[3 * j + 2] = inv * (w != nullptr ? static_cast<double>(w[j]) : 1.0);
      if (gw != nullptr) gw[j] = static_cast<P>(static_cast<double>(gw[j]) + local_sum_dy_xmu[j] * inv);
      if (gb != nullptr) gb[j] = static_cast<P>(static_cast<double>(gb[j]) + local_sum_dy[j]);
    }
  });
}

void cpu_backward_apply(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l,
                        const void* dy, const void* x, const double* coef, const double* coef_b, void* dx) {
  dispatch_input(dtype, [&](auto e) {
    using E = decltype(e);
    using C = typename E::Compute;
    const auto* xs = static_cast<const typename E::Stored*>(x);
    const auto* gs = static_cast<const typename E::Stored*>(dy);
    auto* out = static_cast<typename E::Stored*>(dx);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < c; ++j) {
        const C hi = static_cast<C>(coef[4 * j]), lo = static_cast<C>(coef[4 * j + 1]);
        const C a = static_cast<C>(coef_b[3 * j]), b = static_cast<C>(coef_b[3 * j + 1]);
        const C g = static_cast<C>(coef_b[3 * j + 2]);
        const std::int64_t base = (i * c + j) * l;
        for (std::int64_t k = 0; k < l; ++k) {
          const C xmu = (E::load(xs, base + k) - hi) - lo;
          E::store(out, base + k, (E::load(gs, base + k) - a - xmu * b) * g);
        }
      }
  });
}

}  // namespace

const BatchNormKernels kCpuBatchNormKernels{cpu_stats,    cpu_merge_stats,       cpu_finalize,
                                            cpu_update_running, cpu_forward_coefficients, cpu_apply,
                                            cpu_backward_reduce, cpu_backward_coefficients, cpu_backward_apply};

}  // namespace syncbn::detail
