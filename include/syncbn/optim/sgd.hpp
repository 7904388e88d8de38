#pragma once
// Stochastic gradient descent with momentum, weight decay and Nesterov
// momentum (PyTorch's update rule).

#include <initializer_list>
#include <string>
#include <vector>

#include "syncbn/optim/optimizer.hpp"

namespace syncbn::optim {

/// Options of SGD (PyTorch's meaning and defaults). lr and weight_decay are
/// the defaults of the parameter groups, which may set their own.
struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

/// Updates parameters from their gradients, per group with the group's lr
/// and weight_decay:
///   g = grad + weight_decay * p
///   buf = g (first step), else momentum * buf + (1 - dampening) * g
///   g = nesterov ? g + momentum * buf : buf      (when momentum != 0)
///   p -= lr * g
/// The state of a parameter is its momentum buffer ("momentum_buffer",
/// when momentum != 0). See Optimizer for groups, steps and state.
class SGD : public Optimizer {
 public:
  /// One group of `params` with `options`. Throws InvalidArgument for
  /// lr < 0, momentum < 0, weight_decay < 0, a null or repeated parameter,
  /// or nesterov without momentum or with dampening.
  SGD(std::vector<nn::Parameter*> params, SGDOptions options);
  /// The same for a braced list of parameters, SGD({&w, &b}, options) (which
  /// would otherwise also read as a list of groups).
  SGD(std::initializer_list<nn::Parameter*> params, SGDOptions options);
  /// Parameter groups (e.g. from split_weight_decay); a group's unset lr and
  /// weight_decay are those of `options`. Same errors, and for a group's lr
  /// or weight_decay < 0.
  SGD(ParamGroups groups, SGDOptions options);

  /// The options given at construction (the groups' defaults; each group's
  /// current lr and weight_decay are in param_groups()).
  const SGDOptions& options() const noexcept { return options_; }

 protected:
  std::vector<std::string> buffer_names() const override;
  bool counts_steps() const override { return false; }
  void update(const Group& group, nn::Parameter& param, ParamState& state) override;

 private:
  SGDOptions options_;
};

}  // namespace syncbn::optim
