// MSELoss and CrossEntropyLoss.

#include "syncbn/nn/loss.hpp"

#include "backend/kernels.hpp"
#include "syncbn/error.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::nn {

Tensor MSELoss::forward(const Tensor& input, const Tensor& target) {
  SYNCBN_CHECK(input.defined() && target.defined(), "MSELoss: input or target is undefined, expected tensors");
  SYNCBN_CHECK(target.shape() == input.shape(), "MSELoss: target has shape ", target.shape(), ", expected ",
               input.shape(), " (the input's)");
  SYNCBN_CHECK(input.numel() > 0, "MSELoss: input is empty, expected at least one element");
  Tensor diff = sub(input, target);  // checks dtype and device
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
  SYNCBN_CHECK(logits.defined() && targets.defined(), "CrossEntropyLoss: logits or targets is undefined, expected tensors");
  SYNCBN_CHECK(logits.rank() == 2, "CrossEntropyLoss: expected 2-D logits (N, C), got ", logits.rank(), "-D logits");
  SYNCBN_CHECK(logits.dtype() == DType::Float32 || logits.dtype() == DType::Float64,
               "CrossEntropyLoss: logits have dtype ", dtype_name(logits.dtype()), ", expected float32 or float64");
  SYNCBN_CHECK(targets.dtype() == DType::Int64, "CrossEntropyLoss: targets have dtype ", dtype_name(targets.dtype()),
               ", expected int64 class indices");
  SYNCBN_CHECK(targets.shape() == Shape{logits.size(0)}, "CrossEntropyLoss: targets have shape ", targets.shape(),
               ", expected ", Shape{logits.size(0)});
  SYNCBN_CHECK(targets.device() == logits.device(), "CrossEntropyLoss: targets are on ", targets.device(),
               ", expected ", logits.device(), " (the logits' device)");
  const std::int64_t n = logits.size(0), c = logits.size(1);
  SYNCBN_CHECK(n >= 1 && c >= 1, "CrossEntropyLoss: logits have shape ", logits.shape(), ", expected N >= 1 and C >= 1");
  // Out-of-range classes would index out of bounds: check them on the host
  // (a copy of N integers; a GPU caller synchronises here).
  const auto labels = targets.to_vector<std::int64_t>();
  for (std::size_t i = 0; i < labels.size(); ++i)
    SYNCBN_CHECK(labels[i] >= 0 && labels[i] < c, "CrossEntropyLoss: target ", i, " is class ", labels[i],
                 ", expected a class in [0, ", c, ")");
  Tensor loss = Tensor::empty(Shape{}, logits.dtype(), logits.device());
  syncbn::detail::loss_kernels(logits.device().kind())
      .cross_entropy_forward(logits.device(), logits.dtype(), n, c, logits.raw_data(),
                             targets.data<std::int64_t>(), loss.raw_data());
  logits_ = logits;
  targets_ = targets;
  return loss;
}

Tensor CrossEntropyLoss::backward(double grad_output) {
  SYNCBN_CHECK(logits_.defined(), "CrossEntropyLoss: backward called without a forward, expected forward first");
  Tensor grad = Tensor::empty(logits_.shape(), logits_.dtype(), logits_.device());
  const std::int64_t n = logits_.size(0);
  syncbn::detail::loss_kernels(logits_.device().kind())
      .cross_entropy_backward(logits_.device(), logits_.dtype(), n, logits_.size(1), logits_.raw_data(),
                              targets_.data<std::int64_t>(), grad_output / static_cast<double>(n), grad.raw_data());
  return grad;
}

}  // namespace syncbn::nn
