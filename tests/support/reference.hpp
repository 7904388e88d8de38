#pragma once
// Float64 host references of the layers, written as plainly as possible:
// what the kernels are checked against.

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace syncbn::testing::ref {

using Vec = std::vector<double>;

/// y (n x out) = x (n x in) * w^T (w: out x in) + b.
inline Vec linear(const Vec& x, const Vec& w, const Vec& b, std::int64_t n, std::int64_t in, std::int64_t out) {
  Vec y(static_cast<std::size_t>(n * out));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t o = 0; o < out; ++o) {
      double acc = b.empty() ? 0.0 : b[static_cast<std::size_t>(o)];
      for (std::int64_t k = 0; k < in; ++k)
        acc += x[static_cast<std::size_t>(i * in + k)] * w[static_cast<std::size_t>(o * in + k)];
      y[static_cast<std::size_t>(i * out + o)] = acc;
    }
  return y;
}

/// Batch-norm options of the reference.
struct BnConfig {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;
  bool clamp = false;
};

/// Result of a batch-norm forward + backward over the whole batch.
struct BnResult {
  Vec y, dx, dweight, dbias, mean, var_biased, var_unbiased;
};

/// Batch norm of x viewed as (n, c, l) with batch statistics, and its
/// backward for dy (weight empty: affine off).
inline BnResult batch_norm(const Vec& x, const Vec& dy, const Vec& weight, const Vec& bias, std::int64_t n,
                           std::int64_t c, std::int64_t l, const BnConfig& cfg) {
  BnResult r;
  const std::size_t total = x.size();
  r.y.assign(total, 0.0);
  r.dx.assign(total, 0.0);
  r.dweight.assign(static_cast<std::size_t>(c), 0.0);
  r.dbias.assign(static_cast<std::size_t>(c), 0.0);
  r.mean.assign(static_cast<std::size_t>(c), 0.0);
  r.var_biased.assign(static_cast<std::size_t>(c), 0.0);
  r.var_unbiased.assign(static_cast<std::size_t>(c), 0.0);
  const auto at = [&](std::int64_t i, std::int64_t j, std::int64_t k) { return static_cast<std::size_t>((i * c + j) * l + k); };
  const double count = static_cast<double>(n * l);
  for (std::int64_t j = 0; j < c; ++j) {
    if (n * l == 0) continue;
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < l; ++k) s += x[at(i, j, k)];
    const double mean = s / count;
    double ss = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < l; ++k) ss += (x[at(i, j, k)] - mean) * (x[at(i, j, k)] - mean);
    const double var = ss / count;
    const double invstd = 1.0 / std::sqrt(cfg.clamp ? std::max(var, cfg.eps) : var + cfg.eps);
    const double w = weight.empty() ? 1.0 : weight[static_cast<std::size_t>(j)];
    const double b = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(j)];
    double sdy = 0, sdyxhat = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < l; ++k) {
        const double xhat = (x[at(i, j, k)] - mean) * invstd;
        r.y[at(i, j, k)] = xhat * w + b;
        sdy += dy[at(i, j, k)];
        sdyxhat += dy[at(i, j, k)] * xhat;
      }
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < l; ++k) {
        const double xhat = (x[at(i, j, k)] - mean) * invstd;
        r.dx[at(i, j, k)] = w * invstd * (dy[at(i, j, k)] - sdy / count - xhat * sdyxhat / count);
      }
    r.dweight[static_cast<std::size_t>(j)] = sdyxhat;
    r.dbias[static_cast<std::size_t>(j)] = sdy;
    r.mean[static_cast<std::size_t>(j)] = mean;
    r.var_biased[static_cast<std::size_t>(j)] = var;
    r.var_unbiased[static_cast<std::size_t>(j)] = count > 1 ? ss / (count - 1) : 0.0;
  }
  return r;
}

/// Running statistics after one training batch (PyTorch's rule); `batches`
/// is num_batches_tracked after counting this batch.
inline void update_running(Vec& running_mean, Vec& running_var, const BnResult& r, const BnConfig& cfg,
                           std::int64_t batches) {
  const double f = cfg.momentum ? *cfg.momentum : 1.0 / static_cast<double>(batches);
  for (std::size_t j = 0; j < running_mean.size(); ++j) {
    running_mean[j] = (1 - f) * running_mean[j] + f * r.mean[j];
    running_var[j] = (1 - f) * running_var[j] + f * r.var_unbiased[j];
  }
}

/// Batch norm in eval mode with given running statistics.
inline Vec batch_norm_eval(const Vec& x, const Vec& weight, const Vec& bias, const Vec& rm, const Vec& rv,
                           std::int64_t n, std::int64_t c, std::int64_t l, const BnConfig& cfg) {
  Vec y(x.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const auto u = static_cast<std::size_t>(j);
      const double invstd = 1.0 / std::sqrt(cfg.clamp ? std::max(rv[u], cfg.eps) : rv[u] + cfg.eps);
      const double w = weight.empty() ? 1.0 : weight[u];
      const double b = bias.empty() ? 0.0 : bias[u];
      for (std::int64_t k = 0; k < l; ++k) {
        const auto at = static_cast<std::size_t>((i * c + j) * l + k);
        y[at] = (x[at] - rm[u]) * invstd * w + b;
      }
    }
  return y;
}

/// Mean cross-entropy of logits (n x c) and its gradient.
inline double cross_entropy(const Vec& logits, const std::vector<std::int64_t>& targets, std::int64_t n,
                            std::int64_t c, Vec* grad) {
  double total = 0;
  if (grad) grad->assign(logits.size(), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    double m = logits[static_cast<std::size_t>(i * c)];
    for (std::int64_t j = 1; j < c; ++j) m = std::max(m, logits[static_cast<std::size_t>(i * c + j)]);
    double s = 0;
    for (std::int64_t j = 0; j < c; ++j) s += std::exp(logits[static_cast<std::size_t>(i * c + j)] - m);
    const double lse = m + std::log(s);
    total += lse - logits[static_cast<std::size_t>(i * c + targets[static_cast<std::size_t>(i)])];
    if (grad)
      for (std::int64_t j = 0; j < c; ++j)
        (*grad)[static_cast<std::size_t>(i * c + j)] =
            (std::exp(logits[static_cast<std::size_t>(i * c + j)] - lse) - (j == targets[static_cast<std::size_t>(i)] ? 1.0 : 0.0)) /
            static_cast<double>(n);
  }
  return total / static_cast<double>(n);
}

}  // namespace syncbn::testing::ref
