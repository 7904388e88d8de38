// Linear: y = x W^T + b; backward dx = dy W, dW += dy^T x, db += sum(dy).

#include "syncbn/nn/linear.hpp"

#include <cmath>

#include "layer_checks.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::nn {

Linear::Linear(std::int64_t in_features, std::int64_t out_features, LinearOptions options)
    : in_(in_features), out_(out_features), has_bias_(options.bias) {
  SYNCBN_CHECK(in_features >= 1 && out_features >= 1, "Linear: in_features ", in_features, " and out_features ",
               out_features, ", expected both >= 1");
  SYNCBN_CHECK(options.dtype == DType::Float32 || options.dtype == DType::Float64, "Linear: dtype ",
               dtype_name(options.dtype), ", expected float32 or float64");
  // PyTorch's default: kaiming_uniform(a = sqrt(5)) for the weight, which is
  // U(-1/sqrt(in), 1/sqrt(in)), and the same bound for the bias.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  weight_ = register_parameter("weight", Tensor::rand(Shape{out_features, in_features}, options.seed, options.dtype,
                                                      options.device, -bound, bound));
  if (has_bias_)
    bias_ = register_parameter(
        "bias", Tensor::rand(Shape{out_features}, derive_seed(options.seed, 1), options.dtype, options.device, -bound, bound));
}

std::string Linear::describe() const {
  return "Linear(in_features=" + std::to_string(in_) + ", out_features=" + std::to_string(out_) +
         ", bias=" + (has_bias_ ? "true" : "false") + ")";
}

Parameter& Linear::bias() {
  SYNCBN_CHECK(has_bias_, describe(), ": bias(): the layer has no bias, expected a layer made with bias = true");
  return parameter(bias_);
}

Tensor Linear::forward(const Tensor& input) {
  check_replica_thread();
  const Tensor& w = parameter(weight_).value;
  detail::check_tensor(input, describe(), "input", w.device(), w.dtype());
  SYNCBN_CHECK(input.rank() == 2, describe(), ": expected 2-D input (N, ", in_, "), got ", input.rank(),
               "-D input of shape ", input.shape());
  SYNCBN_CHECK(input.size(1) == in_, describe(), ": input has ", input.size(1), " features, expected ", in_);
  const std::int64_t n = input.size(0);
  Tensor out = Tensor::empty(Shape{n, out_}, w.dtype(), w.device());
  if (has_bias_) {
    // Broadcast the bias into every row as a rank-1 product: ones(n, 1) * b(1, out).
    const Tensor ones = Tensor::ones(Shape{n, 1}, w.dtype(), w.device());
    matmul_(out, ones, parameter(bias_).value.reshape(Shape{1, out_}), false, false, 1.0, 0.0);
    matmul_(out, input, w, false, true, 1.0, 1.0);
  } else {
    matmul_(out, input, w, false, true, 1.0, 0.0);
  }
  input_ = input;
  return out;
}

Tensor Linear::backward(const Tensor& grad_output) {
  check_replica_thread();
  SYNCBN_CHECK(input_.defined(), describe(), ": backward called without a forward, expected forward first");
  detail::check_backward(true, grad_output, Shape{input_.size(0), out_}, describe());
  Parameter& w = parameter(weight_);
  detail::check_tensor(grad_output, describe(), "grad_output", w.value.device(), w.value.dtype());
  matmul_(w.grad, grad_output, input_, true, false, 1.0, 1.0);
  if (has_bias_) add_(parameter(bias_).grad, sum_rows(grad_output));
  return matmul(grad_output, w.value);
}

}  // namespace syncbn::nn
