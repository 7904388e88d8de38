#pragma once
// Stochastic gradient descent with momentum, weight decay and Nesterov
// momentum (PyTorch's update rule).

#include <vector>

#include "syncbn/nn/module.hpp"

namespace syncbn::optim {

/// Options of SGD (PyTorch's meaning and defaults).
struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

/// Updates parameters from their gradients:
///   g = grad + weight_decay * p
///   buf = g (first step), else momentum * buf + (1 - dampening) * g
///   g = nesterov ? g + momentum * buf : buf      (when momentum != 0)
///   p -= lr * g
/// The parameter pointers must stay valid (e.g. from module.parameters(),
/// taken after the module tree is final).
class SGD {
 public:
  /// Throws InvalidArgument for lr < 0, momentum < 0, weight_decay < 0, a
  /// null parameter, or nesterov without momentum or with dampening.
  SGD(std::vector<nn::Parameter*> params, SGDOptions options);
  /// One update of every parameter.
  void step();
  /// Sets every gradient to zero.
  void zero_grad();
  const SGDOptions& options() const noexcept { return options_; }

 private:
  std::vector<nn::Parameter*> params_;
  SGDOptions options_;
  std::vector<Tensor> momentum_;
};

}  // namespace syncbn::optim
