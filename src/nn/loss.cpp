// MSELoss and CrossEntropyLoss.

#include "syncbn/nn/loss.hpp"

#include "syncbn/error.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::nn {

Tensor MSELoss::forward(const Tensor& input, const Tensor& target) {
  SYNCBN_CHECK(input.defined() && target.defined(), "MSELoss: input or target is undefined, expected tensors");
  SYNCBN_CHECK(target.shape() == input.shape(), "MSELoss: target has shape ", target.shape(), ", expected ",
               input.shape(), " (the input's)");
  SYNCBN_CHECK(input.numel() > 0, "MSELoss: input is empty, expected at least one element");
  SYNCBN_CHECK(input.dtype() == DType::Float32 || input.dtype() == DType::Float64, "MSELoss: input has dtype ",
               dtype_name(input.dtype()), ", expected float32 or float64");
  SYNCBN_CHECK(target.dtype() == input.dtype(), "MSELoss: target has dtype ", dtype_name(target.dtype()), ", expected ",
               dtype_name(input.dtype()), " (the input's)");
  SYNCBN_CHECK(target.device() == input.device(), "MSELoss: target is on ", target.device(), ", expected ",
               input.device(), " (the input's)");
  Tensor diff = sub(input, target);
  Tensor loss = sum(mul(diff, diff));
  scale_(loss, 1.0 / static_cast<double>(input.numel()));
  diff_ = diff;
  return loss;
}

Tensor MSELoss::backward(double grad_output) {
  SYNCBN_CHECK(diff_.defined(), "MSELoss: backward called without a forward, expected forward first");
  return scale(diff_, 2.0 * grad_output / static_cast<double>(diff_.numel()));
}

Tensor CrossEntropyLoss::forward(const Tensor& logits, const Tensor& targets) {
  Tensor loss = core::cross_entropy(logits, targets, "CrossEntropyLoss");
  logits_ = logits;
  targets_ = targets;
  return loss;
}

Tensor CrossEntropyLoss::backward(double grad_output) {
  SYNCBN_CHECK(logits_.defined(), "CrossEntropyLoss: backward called without a forward, expected forward first");
  return core::cross_entropy_backward(logits_, targets_, grad_output, "CrossEntropyLoss");
}

}  // namespace syncbn::nn
