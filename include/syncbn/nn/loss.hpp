#pragma once
// Losses with mean reduction: forward(input, target) returns a rank-0 tensor;
// backward(g) returns dL/dinput scaled by g for the latest forward.

#include "syncbn/core/tensor.hpp"

namespace syncbn::nn {

/// mean((input - target)^2) over all elements.
class MSELoss {
 public:
  /// input and target: same shape, dtype (float32/float64) and device, at
  /// least one element.
  Tensor forward(const Tensor& input, const Tensor& target);
  /// 2 * (input - target) / numel * grad_output.
  Tensor backward(double grad_output = 1.0);

 private:
  Tensor diff_;
};

/// Softmax + negative log-likelihood, averaged over the batch.
class CrossEntropyLoss {
 public:
  /// logits (N, C) float32/float64, targets (N) int64 class indices in [0, C)
  /// on the same device; N >= 1.
  Tensor forward(const Tensor& logits, const Tensor& targets);
  /// (softmax(logits) - onehot(targets)) / N * grad_output.
  Tensor backward(double grad_output = 1.0);

 private:
  Tensor logits_;
  Tensor targets_;
};

}  // namespace syncbn::nn
