// SGD: PyTorch's update rule with element-wise ops on each parameter's device.

#include "syncbn/optim/sgd.hpp"

#include "syncbn/error.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::optim {

SGD::SGD(std::vector<nn::Parameter*> params, SGDOptions options)
    : params_(std::move(params)), options_(options), momentum_(params_.size()) {
  SYNCBN_CHECK(options.lr >= 0, "SGD: lr is ", options.lr, ", expected >= 0");
  SYNCBN_CHECK(options.momentum >= 0, "SGD: momentum is ", options.momentum, ", expected >= 0");
  SYNCBN_CHECK(options.weight_decay >= 0, "SGD: weight_decay is ", options.weight_decay, ", expected >= 0");
  SYNCBN_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0),
               "SGD: nesterov needs momentum > 0 and dampening 0, got momentum ", options.momentum, " and dampening ",
               options.dampening);
  for (std::size_t i = 0; i < params_.size(); ++i)
    SYNCBN_CHECK(params_[i] != nullptr, "SGD: parameter ", i, " is null, expected a parameter");
}

void SGD::step() {
  // Every parameter is checked before the first one changes: a step updates
  // all parameters or none.
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const nn::Parameter& p = *params_[i];
    SYNCBN_CHECK(p.value.defined() && p.grad.defined(), "SGD::step: parameter ", i,
                 " has an undefined value or gradient, expected both");
    SYNCBN_CHECK(p.value.dtype() == DType::Float32 || p.value.dtype() == DType::Float64, "SGD::step: parameter ", i,
                 " has dtype ", dtype_name(p.value.dtype()), ", expected float32 or float64");
    SYNCBN_CHECK(p.grad.shape() == p.value.shape() && p.grad.dtype() == p.value.dtype() &&
                     p.grad.device() == p.value.device(),
                 "SGD::step: the gradient of parameter ", i, " is ", dtype_name(p.grad.dtype()), " ", p.grad.shape(),
                 " on ", p.grad.device(), ", expected ", dtype_name(p.value.dtype()), " ", p.value.shape(), " on ",
                 p.value.device(), " (its value's)");
    const Tensor& buf = momentum_[i];
    SYNCBN_CHECK(!buf.defined() || (buf.shape() == p.value.shape() && buf.dtype() == p.value.dtype() &&
                                    buf.device() == p.value.device()),
                 "SGD::step: parameter ", i, " changed shape, dtype or device since the previous step, expected "
                 "the one its momentum buffer has, ", dtype_name(buf.dtype()), " ", buf.shape(), " on ", buf.device());
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    nn::Parameter& p = *params_[i];
    Tensor g = p.grad;
    if (options_.weight_decay != 0) {
      g = g.clone();
      add_(g, p.value, options_.weight_decay);
    }
    if (options_.momentum != 0) {
      Tensor& buf = momentum_[i];
      if (!buf.defined()) {
        buf = g.clone();
      } else {
        axpby_(buf, 1.0 - options_.dampening, g, options_.momentum);
      }
      if (options_.nesterov) {
        g = g.clone();
        add_(g, buf, options_.momentum);
      } else {
        g = buf;
      }
    }
    add_(p.value, g, -options_.lr);
  }
}

void SGD::zero_grad() {
  for (nn::Parameter* p : params_) p->grad.fill_(0.0);
}

}  // namespace syncbn::optim
