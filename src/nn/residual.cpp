// Residual: the sum of two branches over one input.

#include "syncbn/nn/residual.hpp"

#include "layer_checks.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/nn/forward_transaction.hpp"

namespace syncbn::nn {

Residual::Residual(std::shared_ptr<Module> body, std::shared_ptr<Module> shortcut)
    : has_shortcut_(shortcut != nullptr) {
  SYNCBN_CHECK(body != nullptr, "Residual: body is null, expected a module");
  register_module("body", std::move(body));
  if (has_shortcut_) register_module("shortcut", std::move(shortcut));
}

std::string Residual::describe() const {
  return "Residual(body=" + children()[0].second->describe() +
         ", shortcut=" + (has_shortcut_ ? children()[1].second->describe() : std::string("identity")) + ")";
}

Tensor Residual::forward(const Tensor& input) {
  check_replica_thread();
  SYNCBN_CHECK(input.defined(), describe(), ": input is undefined, expected a tensor");
  has_forward_ = false;
  ForwardTransaction transaction;  // Note [All-or-nothing forward]
  Tensor main = child(0).forward(input);
  Tensor side = has_shortcut_ ? child(1).forward(input) : input;
  SYNCBN_CHECK(main.shape() == side.shape(), "Residual: body gives shape ", main.shape(), ", expected ", side.shape(),
               has_shortcut_ ? " (the shortcut's)" : " (the input's, for the identity shortcut)");
  Tensor out = add(main, side);
  output_shape_ = out.shape();
  has_forward_ = true;
  return out;
}

Tensor Residual::backward(const Tensor& grad_output) {
  check_replica_thread();
  detail::check_backward(has_forward_, grad_output, output_shape_, describe());
  Tensor g = child(0).backward(grad_output);
  if (has_shortcut_) return add(g, child(1).backward(grad_output));
  return add(g, grad_output);
}

}  // namespace syncbn::nn
