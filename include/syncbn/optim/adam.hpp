#pragma once
// Adam and AdamW (PyTorch 1.13's update rules, defaults and option checks).

#include <array>
#include <initializer_list>
#include <string>
#include <vector>

#include "syncbn/optim/optimizer.hpp"

namespace syncbn::optim {

/// Options of Adam (torch.optim.Adam's meaning and defaults). lr and
/// weight_decay are the defaults of the parameter groups, which may set
/// their own.
struct AdamOptions {
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8;
  /// L2 penalty: weight_decay * p is added to the gradient.
  double weight_decay = 0.0;
  /// Normalise by the running maximum of the second moment (AMSGrad).
  bool amsgrad = false;
};

/// Options of AdamW (torch.optim.AdamW's defaults: weight_decay 1e-2).
struct AdamWOptions {
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8;
  /// Decoupled decay: p *= 1 - lr * weight_decay before the Adam update.
  double weight_decay = 1e-2;
  bool amsgrad = false;
};

/// Adam: per parameter, with the group's lr and weight_decay and the
/// parameter's own step count t (1 at its first step):
///   g = grad + weight_decay * p
///   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
///   amsgrad: v_max = max(v_max, v), used for v below
///   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// m, v and v_max start at zero. Each element is computed in float64 and
/// stored once in the parameter's dtype (core::adam_update_), on the
/// parameter's device. State per parameter: "exp_avg", "exp_avg_sq",
/// "max_exp_avg_sq" (amsgrad) and "step". See Optimizer for groups, steps
/// and state.
class Adam : public Optimizer {
 public:
  /// One group of `params` with `options`. Throws InvalidArgument, as
  /// PyTorch, unless lr >= 0, eps >= 0, 0 <= betas[i] < 1 and
  /// weight_decay >= 0, and for a null or repeated parameter.
  Adam(std::vector<nn::Parameter*> params, AdamOptions options = {});
  /// The same for a braced list of parameters, Adam({&w, &b}, options)
  /// (which would otherwise also read as a list of groups).
  Adam(std::initializer_list<nn::Parameter*> params, AdamOptions options = {});
  /// Parameter groups (e.g. from split_weight_decay); a group's unset lr and
  /// weight_decay are those of `options`. Same errors, and for a group's lr
  /// or weight_decay < 0.
  Adam(ParamGroups groups, AdamOptions options = {});

  /// The options given at construction (the groups' defaults).
  const AdamOptions& options() const noexcept { return options_; }

 protected:
  /// AdamW's constructor: `decoupled` selects the decoupled weight decay.
  Adam(std::string name, ParamGroups groups, AdamOptions options, bool decoupled);

  std::vector<std::string> buffer_names() const override;
  bool counts_steps() const override { return true; }
  void update(const Group& group, nn::Parameter& param, ParamState& state) override;

 private:
  AdamOptions options_;
  bool decoupled_;
};

/// AdamW: Adam whose weight decay is decoupled from the gradient (PyTorch's
/// AdamW): p *= 1 - lr * weight_decay, then the Adam update with g = grad.
/// Everything else is Adam's, with errors naming "AdamW".
class AdamW : public Adam {
 public:
  AdamW(std::vector<nn::Parameter*> params, AdamWOptions options = {});
  AdamW(std::initializer_list<nn::Parameter*> params, AdamWOptions options = {});
  AdamW(ParamGroups groups, AdamWOptions options = {});
};

}  // namespace syncbn::optim
