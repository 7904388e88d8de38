// ReLU, Flatten and Identity.

#include "syncbn/nn/activation.hpp"

#include "layer_checks.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::nn {

Tensor ReLU::forward(const Tensor& input) {
  check_replica_thread();
  SYNCBN_CHECK(input.defined(), describe(), ": input is undefined, expected a tensor");
  SYNCBN_CHECK(input.dtype() == DType::Float32 || input.dtype() == DType::Float64, describe(), ": input has dtype ",
               dtype_name(input.dtype()), ", expected float32 or float64");
  output_ = relu(input);
  return output_;
}

Tensor ReLU::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(output_.defined(), grad_output, output_.shape(), describe());
  SYNCBN_CHECK(grad_output.dtype() == output_.dtype() && grad_output.device() == output_.device(), describe(),
               ": grad_output is ", dtype_name(grad_output.dtype()), " on ", grad_output.device(), ", expected ",
               dtype_name(output_.dtype()), " on ", output_.device(), " (as the output)");
  return relu_backward(grad_output, output_);
}

Tensor Flatten::forward(const Tensor& input) {
  check_replica_thread();
  SYNCBN_CHECK(input.defined(), describe(), ": input is undefined, expected a tensor");
  SYNCBN_CHECK(input.rank() >= 2, describe(), ": expected input of rank >= 2 (N, ...), got ", input.rank(),
               "-D input");
  std::int64_t features = 1;
  for (int i = 1; i < input.rank(); ++i) features *= input.size(i);
  input_shape_ = input.shape();
  output_shape_ = Shape{input.size(0), features};
  has_input_ = true;
  return input.reshape(output_shape_);
}

Tensor Flatten::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(has_input_, grad_output, output_shape_, describe());
  return grad_output.reshape(input_shape_);
}

Tensor Identity::forward(const Tensor& input) {
  check_replica_thread();
  SYNCBN_CHECK(input.defined(), describe(), ": input is undefined, expected a tensor");
  // The shape only: backward checks grad_output against it, as every layer does.
  shape_ = input.shape();
  has_input_ = true;
  return input;
}

Tensor Identity::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(has_input_, grad_output, shape_, describe());
  return grad_output;
}

}  // namespace syncbn::nn
