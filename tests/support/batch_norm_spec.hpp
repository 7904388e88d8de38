#pragma once
// The specification of batch normalization, stage by stage: plain float64
// loops, written to be obviously correct rather than fast. Every backend's
// stages (syncbn/core/batch_norm.hpp: the CPU kernels at every CPU level and
// the CUDA kernels) are tested against these functions in
// tests/core/test_batch_norm_stages.cpp, and the layer reference
// (support/reference.hpp) is made of them. docs/numerics.md says how close
// each backend must come.
//
// x is viewed as (n, c, l): channel j holds x[(i * c + j) * l + k].

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace syncbn::testing::spec {

using Vec = std::vector<double>;

/// Index of element (i, j, k) of an (n, c, l) array.
inline std::size_t at(std::int64_t c, std::int64_t l, std::int64_t i, std::int64_t j, std::int64_t k) {
  return static_cast<std::size_t>((i * c + j) * l + k);
}

/// Per-channel count, mean and M2 (sum of squared deviations from the mean).
struct Moments {
  std::int64_t count = 0;
  Vec mean, m2;
};

/// Stage 1, per shard: two passes, the mean first, then the squared deviations.
inline Moments moments(const Vec& x, std::int64_t n, std::int64_t c, std::int64_t l) {
  Moments m{n * l, Vec(static_cast<std::size_t>(c), 0.0), Vec(static_cast<std::size_t>(c), 0.0)};
  if (m.count == 0) return m;
  for (std::int64_t j = 0; j < c; ++j) {
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < l; ++k) sum += x[at(c, l, i, j, k)];
    const double mean = sum / static_cast<double>(m.count);
    double m2 = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < l; ++k) m2 += (x[at(c, l, i, j, k)] - mean) * (x[at(c, l, i, j, k)] - mean);
    m.mean[static_cast<std::size_t>(j)] = mean;
    m.m2[static_cast<std::size_t>(j)] = m2;
  }
  return m;
}

/// Stage 2, over shards: the pooled moments of the union, from the
/// count-weighted mean and each part's M2 plus its spread around that mean
/// (the backends merge pairwise, Chan et al.; both are exact in real numbers).
inline Moments merge(const std::vector<Moments>& parts) {
  const std::size_t c = parts.front().mean.size();
  Moments out{0, Vec(c, 0.0), Vec(c, 0.0)};
  for (const Moments& p : parts) out.count += p.count;
  if (out.count == 0) return out;
  for (std::size_t j = 0; j < c; ++j) {
    double weighted = 0;
    for (const Moments& p : parts) weighted += static_cast<double>(p.count) * p.mean[j];
    const double mean = weighted / static_cast<double>(out.count);
    double m2 = 0;
    for (const Moments& p : parts)
      m2 += p.m2[j] + static_cast<double>(p.count) * (p.mean[j] - mean) * (p.mean[j] - mean);
    out.mean[j] = mean;
    out.m2[j] = m2;
  }
  return out;
}

/// 1 / sqrt(var + eps), or 1 / sqrt(max(var, eps)) in clamp mode.
inline double invstd_of(double var, double eps, bool clamp) {
  return 1.0 / std::sqrt(clamp ? std::max(var, eps) : var + eps);
}

/// Batch Renormalization's factors per channel (Ioffe 2017): r =
/// clamp(sigma_batch / sigma, 1/rmax, rmax), d = clamp((mean - running_mean)
/// / sigma, -dmax, dmax), sigma the running standard deviation as eval
/// normalises with it, sigma_batch = 1 / invstd.
struct Renorm {
  Vec r, d;
};
inline Renorm renorm_factors(const Vec& mean, const Vec& invstd, const Vec& running_mean, const Vec& running_var,
                             double eps, bool clamp, double rmax, double dmax) {
  Renorm out;
  for (std::size_t j = 0; j < mean.size(); ++j) {
    const double sigma = 1.0 / invstd_of(running_var[j], eps, clamp);
    out.r.push_back(std::clamp((1.0 / invstd[j]) / sigma, 1.0 / rmax, rmax));
    out.d.push_back(std::clamp((mean[j] - running_mean[j]) / sigma, -dmax, dmax));
  }
  return out;
}

/// Stage 3: invstd from the biased variance M2 / count, and the unbiased
/// variance M2 / (count - 1) that the running variance takes (0 for count <= 1).
/// `clamped`: in clamp mode, the channels whose variance is at most eps, so
/// that invstd = 1 / sqrt(eps) does not depend on the variance.
struct Variance {
  Vec invstd, unbiased_var;
  std::vector<bool> clamped;
};
inline Variance variance(const Moments& m, double eps, bool clamp) {
  Variance v;
  for (std::size_t j = 0; j < m.m2.size(); ++j) {
    const double biased = m.count > 0 ? m.m2[j] / static_cast<double>(m.count) : 0.0;
    v.invstd.push_back(invstd_of(biased, eps, clamp));
    v.unbiased_var.push_back(m.count > 1 ? m.m2[j] / static_cast<double>(m.count - 1) : 0.0);
    v.clamped.push_back(clamp && biased <= eps);
  }
  return v;
}

/// The running statistics after one batch: f = momentum, or 1 / batches
/// (batches counted after this one) for a cumulative average. f = 1 takes
/// the batch's values (also where the old value is infinite).
inline void update_running(Vec& running_mean, Vec& running_var, std::int64_t& batches, const Vec& mean,
                           const Vec& unbiased_var, std::optional<double> momentum) {
  ++batches;
  const double f = momentum ? *momentum : 1.0 / static_cast<double>(batches);
  for (std::size_t j = 0; j < running_mean.size(); ++j) {
    running_mean[j] = f == 1 ? mean[j] : (1 - f) * running_mean[j] + f * mean[j];
    running_var[j] = f == 1 ? unbiased_var[j] : (1 - f) * running_var[j] + f * unbiased_var[j];
  }
}

/// Stage 4: y = (x - mean) * invstd * weight + bias (weight and bias empty:
/// 1 and 0).
inline Vec apply(const Vec& x, std::int64_t n, std::int64_t c, std::int64_t l, const Vec& mean, const Vec& invstd,
                 const Vec& weight, const Vec& bias) {
  Vec y(x.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const auto u = static_cast<std::size_t>(j);
      const double w = weight.empty() ? 1.0 : weight[u];
      const double b = bias.empty() ? 0.0 : bias[u];
      for (std::int64_t k = 0; k < l; ++k) y[at(c, l, i, j, k)] = (x[at(c, l, i, j, k)] - mean[u]) * invstd[u] * w + b;
    }
  return y;
}

/// Per-channel sum(dy), sum(dy * (x - mean)) and sum(x - mean), about the
/// mean the forward normalised with; sum_xmu empty: zeros.
struct GradSums {
  Vec sum_dy, sum_dy_xmu, sum_xmu;
};

/// Stage 5, per shard: the gradient sums.
inline GradSums grad_sums(const Vec& dy, const Vec& x, std::int64_t n, std::int64_t c, std::int64_t l,
                          const Vec& mean) {
  const auto channels = static_cast<std::size_t>(c);
  GradSums g{Vec(channels, 0.0), Vec(channels, 0.0), Vec(channels, 0.0)};
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      for (std::int64_t k = 0; k < l; ++k) {
        const auto u = static_cast<std::size_t>(j);
        g.sum_dy[u] += dy[at(c, l, i, j, k)];
        g.sum_dy_xmu[u] += dy[at(c, l, i, j, k)] * (x[at(c, l, i, j, k)] - mean[u]);
        g.sum_xmu[u] += x[at(c, l, i, j, k)] - mean[u];
      }
  return g;
}

/// The exact mean's offset from the forward's, sum_xmu / count, of a
/// group's total over `count` values (0 for count 0 or no sum_xmu).
inline double mean_offset(const GradSums& total, std::size_t j, std::int64_t count) {
  return count > 0 && !total.sum_xmu.empty() ? total.sum_xmu[j] / static_cast<double>(count) : 0.0;
}

/// Stage 6: dx from the sums over all `count` values per channel of the
/// batch, about the exact mean m = mean + mean_offset: w * invstd * (dy -
/// sum_dy / count - (x - m) * invstd^2 * sum(dy * (x - m)) / count).
/// count 0 (constant statistics, eval mode) leaves the two batch terms out;
/// a clamped channel (`clamped`, empty for none) the last one, since its
/// invstd does not depend on the variance.
inline Vec backward_apply(const Vec& dy, const Vec& x, std::int64_t n, std::int64_t c, std::int64_t l,
                          const Vec& mean, const Vec& invstd, const Vec& weight, const GradSums& total,
                          std::int64_t count, const std::vector<bool>& clamped = {}) {
  Vec dx(x.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const auto u = static_cast<std::size_t>(j);
      const double w = weight.empty() ? 1.0 : weight[u];
      const double e = mean_offset(total, u, count);
      const double mean_dy = count > 0 ? total.sum_dy[u] / static_cast<double>(count) : 0.0;
      const bool fixed_invstd = !clamped.empty() && clamped[u];
      const double sum_dy_xm = total.sum_dy_xmu[u] - e * total.sum_dy[u];
      const double mean_dy_xmu = count > 0 && !fixed_invstd ? sum_dy_xm / static_cast<double>(count) : 0.0;
      for (std::int64_t k = 0; k < l; ++k) {
        // x - (mean + e), without rounding mean + e at the mean's magnitude.
        const double xmu = (x[at(c, l, i, j, k)] - mean[u]) - e;
        dx[at(c, l, i, j, k)] =
            w * invstd[u] * (dy[at(c, l, i, j, k)] - mean_dy - xmu * invstd[u] * invstd[u] * mean_dy_xmu);
      }
    }
  return dx;
}

/// Stage 7: a part's parameter gradients, added to grad_weight
/// (sum(dy * (x - m)) * invstd, m the exact mean of the group whose total
/// over `count` values is `total`) and grad_bias (sum(dy)).
inline void param_grads(Vec& grad_weight, Vec& grad_bias, const Vec& invstd, const GradSums& part,
                        const GradSums& total, std::int64_t count) {
  for (std::size_t j = 0; j < invstd.size(); ++j) {
    const double e = mean_offset(total, j, count);
    grad_weight[j] += (part.sum_dy_xmu[j] - e * part.sum_dy[j]) * invstd[j];
    grad_bias[j] += part.sum_dy[j];
  }
}

/// The fused activations by their definitions: y = act(z) and act'(z)
/// (1 for z > 0, else 0 for relu, alpha for leaky_relu, alpha * exp(z) for
/// elu). kind: 0 identity, 1 relu, 2 leaky_relu, 3 elu
/// (core::ActivationKind's order).
inline double activate(int kind, double alpha, double z) {
  switch (kind) {
    case 1: return z > 0 ? z : 0.0;
    case 2: return z > 0 ? z : alpha * z;
    case 3: return z > 0 ? z : alpha * (std::exp(z) - 1.0);
    default: return z;
  }
}

inline double activation_slope(int kind, double alpha, double z) {
  switch (kind) {
    case 1: return z > 0 ? 1.0 : 0.0;
    case 2: return z > 0 ? 1.0 : alpha;
    case 3: return z > 0 ? 1.0 : alpha * std::exp(z);
    default: return 1.0;
  }
}

/// An (n, c, l) array in channels-last order (n, l, c), and back.
inline Vec to_channels_last(const Vec& x, std::int64_t n, std::int64_t c, std::int64_t l) {
  Vec out(x.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      for (std::int64_t k = 0; k < l; ++k) out[static_cast<std::size_t>((i * l + k) * c + j)] = x[at(c, l, i, j, k)];
  return out;
}

inline Vec to_channels_first(const Vec& x, std::int64_t n, std::int64_t c, std::int64_t l) {
  Vec out(x.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      for (std::int64_t k = 0; k < l; ++k) out[at(c, l, i, j, k)] = x[static_cast<std::size_t>((i * l + k) * c + j)];
  return out;
}

}  // namespace syncbn::testing::spec
