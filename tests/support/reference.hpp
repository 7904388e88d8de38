#pragma once
// Float64 host references of the layers, written as plainly as possible:
// what the layers are checked against. Batch norm is composed of the stages
// of its specification, support/batch_norm_spec.hpp.

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "support/batch_norm_spec.hpp"

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
/// backward for dy (weight empty: affine off): the stages of the
/// specification (support/batch_norm_spec.hpp) over the whole batch.
inline BnResult batch_norm(const Vec& x, const Vec& dy, const Vec& weight, const Vec& bias, std::int64_t n,
                           std::int64_t c, std::int64_t l, const BnConfig& cfg) {
  const spec::Moments m = spec::moments(x, n, c, l);
  const spec::Variance v = spec::variance(m, cfg.eps, cfg.clamp);
  const spec::GradSums g = spec::grad_sums(dy, x, n, c, l, m.mean);
  BnResult r;
  r.y = spec::apply(x, n, c, l, m.mean, v.invstd, weight, bias);
  r.dx = spec::backward_apply(dy, x, n, c, l, m.mean, v.invstd, weight, g, m.count, v.clamped);
  r.dweight.assign(static_cast<std::size_t>(c), 0.0);
  r.dbias.assign(static_cast<std::size_t>(c), 0.0);
  spec::param_grads(r.dweight, r.dbias, v.invstd, g, g, m.count);
  r.mean = m.mean;
  for (double m2 : m.m2) r.var_biased.push_back(m.count > 0 ? m2 / static_cast<double>(m.count) : 0.0);
  r.var_unbiased = v.unbiased_var;
  return r;
}

/// Running statistics after one training batch (PyTorch's rule); `batches`
/// is num_batches_tracked after counting this batch.
inline void update_running(Vec& running_mean, Vec& running_var, const BnResult& r, const BnConfig& cfg,
                           std::int64_t batches) {
  std::int64_t before = batches - 1;
  spec::update_running(running_mean, running_var, before, r.mean, r.var_unbiased, cfg.momentum);
}

/// Rows [first_row, first_row + rows) of values laid out as rows of
/// `row_size` (a part of a batch, e.g. one rank's or one group's).
inline Vec rows_of(const Vec& v, std::int64_t first_row, std::int64_t rows, std::int64_t row_size) {
  return {v.begin() + first_row * row_size, v.begin() + (first_row + rows) * row_size};
}

/// Batch norm in eval mode with given running statistics.
inline Vec batch_norm_eval(const Vec& x, const Vec& weight, const Vec& bias, const Vec& rm, const Vec& rv,
                           std::int64_t n, std::int64_t c, std::int64_t l, const BnConfig& cfg) {
  Vec invstd;
  for (double var : rv) invstd.push_back(spec::invstd_of(var, cfg.eps, cfg.clamp));
  return spec::apply(x, n, c, l, rm, invstd, weight, bias);
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
