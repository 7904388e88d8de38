#pragma once
// Element-wise and reduction operations on tensors.
//
// Every operation checks its arguments first (same device, same dtype, same
// shape where required; float32 or float64) and throws InvalidArgument naming
// the operation, what it expected and what it got; nothing is written then.
// Reductions accumulate in float64 whatever the dtype. CUDA operations are
// queued on the device's stream and return without waiting.

#include <cstdint>
#include <span>

#include "syncbn/core/tensor.hpp"

namespace syncbn::core {

/// a + b, element-wise (same shape, dtype and device).
Tensor add(const Tensor& a, const Tensor& b);
/// a - b, element-wise.
Tensor sub(const Tensor& a, const Tensor& b);
/// a * b, element-wise.
Tensor mul(const Tensor& a, const Tensor& b);
/// alpha * a.
Tensor scale(const Tensor& a, double alpha);

/// y += alpha * x, in place (same shape, dtype and device).
void add_(const Tensor& y, const Tensor& x, double alpha = 1.0);
/// y = alpha * x + beta * y, in place; beta == 0 never reads y.
void axpby_(const Tensor& y, double alpha, const Tensor& x, double beta);
/// x *= alpha, in place.
void scale_(const Tensor& x, double alpha);

/// The hyper-parameters of one Adam or AdamW step (PyTorch's meaning).
struct AdamStep {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  /// true: AdamW's decoupled decay, p *= 1 - lr * weight_decay before the
  /// update; false: Adam's L2 penalty, grad + weight_decay * p.
  bool decoupled_weight_decay = false;
  /// The parameter's step count including this step (>= 1), for the bias
  /// corrections 1 - beta1^step and 1 - beta2^step.
  std::int64_t step = 1;
};

/// One Adam (or AdamW) step of `param`, in place, as PyTorch 1.13's
/// single-tensor update: the moments exp_avg and exp_avg_sq are updated
/// with grad, then param moves by -lr / (1 - beta1^step) * exp_avg /
/// (sqrt(v) / sqrt(1 - beta2^step) + eps), where v is exp_avg_sq, or with
/// amsgrad (max_exp_avg_sq defined) the running maximum of exp_avg_sq kept in
/// max_exp_avg_sq. Every tensor has param's shape, dtype (float32 or float64)
/// and device; the four updated tensors do not overlap in memory. Each
/// element is computed in float64 and stored once in the dtype.
/// InvalidArgument, before anything is written, for lr < 0, eps < 0, a beta
/// outside [0, 1), weight_decay < 0 or step < 1.
void adam_update_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                  const Tensor& max_exp_avg_sq, const AdamStep& step);

/// The sum of all elements, as a rank-0 tensor of a's dtype and device.
Tensor sum(const Tensor& a);
/// Sum over dimension 0: (N, d1, ...) -> (d1, ...), rank >= 1.
Tensor sum_rows(const Tensor& a);

/// The element-wise sum sources[0] + sources[1] + ... on `device`,
/// accumulated in float64 in source order (deterministic): 1 to
/// kMaxReplicas float32 or float64 tensors of one shape and dtype whose
/// memory `device` shares (Device::shares_memory_with); they are read in
/// place.
Tensor sum_tensors(std::span<const Tensor* const> sources, Device device);

/// op(a) * op(b) for 2-D a and b, op = transpose when the flag is set:
/// (m x k) * (k x n) -> (m x n). Same dtype and device.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
/// c = alpha * op(a) * op(b) + beta * c, in place (beta == 0 never reads c);
/// c must not overlap a or b in memory.
void matmul_(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha = 1.0,
             double beta = 0.0);

/// max(x, 0) element-wise.
Tensor relu(const Tensor& x);
/// dy where y > 0, else 0 (y is relu's output).
Tensor relu_backward(const Tensor& grad_output, const Tensor& output);

/// Cross-entropy of logits (N, C) (float32 / float64, N, C >= 1) against
/// int64 class indices (N) in [0, C) on the same device: the mean over rows
/// of logsumexp(row) - row[target], as a rank-0 tensor of the logits' dtype.
/// Errors start with `op` (a layer passes its own name).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const char* op = "cross_entropy");
/// The gradient of cross_entropy times `grad_output`: (softmax(row) -
/// onehot(target)) * grad_output / N.
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_output,
                              const char* op = "cross_entropy_backward");

}  // namespace syncbn::core
