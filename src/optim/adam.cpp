// Adam and AdamW: the options checks of PyTorch 1.13, the per-parameter
// state, and one fused core::adam_update_ per parameter.

#include "syncbn/optim/adam.hpp"

#include "syncbn/error.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::optim {
namespace {

// torch.optim.Adam's and AdamW's checks of eps and betas; lr and
// weight_decay are checked by the Optimizer base with every group's values.
// Returns the options, to be called before the base is made.
const AdamOptions& checked(const std::string& name, const AdamOptions& o) {
  SYNCBN_CHECK(o.eps >= 0, name, ": eps is ", o.eps, ", expected >= 0");
  for (std::size_t i = 0; i < o.betas.size(); ++i)
    SYNCBN_CHECK(o.betas[i] >= 0 && o.betas[i] < 1, name, ": betas[", i, "] is ", o.betas[i],
                 ", expected 0 <= betas[", i, "] < 1");
  return o;
}

AdamOptions as_adam(const AdamWOptions& o) { return AdamOptions{o.lr, o.betas, o.eps, o.weight_decay, o.amsgrad}; }

}  // namespace

Adam::Adam(std::vector<nn::Parameter*> params, AdamOptions options)
    : Adam("Adam", one_group(std::move(params)), options, false) {}

Adam::Adam(std::initializer_list<nn::Parameter*> params, AdamOptions options)
    : Adam(std::vector<nn::Parameter*>(params), options) {}

Adam::Adam(ParamGroups groups, AdamOptions options) : Adam("Adam", std::move(groups), options, false) {}

Adam::Adam(std::string name, ParamGroups groups, AdamOptions options, bool decoupled)
    : Optimizer(name, std::move(groups), checked(name, options).lr, options.weight_decay),
      options_(options),
      decoupled_(decoupled) {}

std::vector<std::string> Adam::buffer_names() const {
  if (options_.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

void Adam::update(const Group& group, nn::Parameter& p, ParamState& state) {
  if (state.buffers.empty()) {  // the first step: moments start at zero, as in PyTorch
    for (std::size_t b = 0; b < buffer_names().size(); ++b)
      state.buffers.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
  }
  core::AdamStep step;
  step.lr = group.lr;
  step.beta1 = options_.betas[0];
  step.beta2 = options_.betas[1];
  step.eps = options_.eps;
  step.weight_decay = group.weight_decay;
  step.decoupled_weight_decay = decoupled_;
  step.step = state.step + 1;
  core::adam_update_(p.value, p.grad, state.buffers[0], state.buffers[1],
                     options_.amsgrad ? state.buffers[2] : Tensor(), step);
  state.step = step.step;  // counted once the update is queued
}

AdamW::AdamW(std::vector<nn::Parameter*> params, AdamWOptions options)
    : Adam("AdamW", one_group(std::move(params)), as_adam(options), true) {}

AdamW::AdamW(std::initializer_list<nn::Parameter*> params, AdamWOptions options)
    : AdamW(std::vector<nn::Parameter*>(params), options) {}

AdamW::AdamW(ParamGroups groups, AdamWOptions options)
    : Adam("AdamW", std::move(groups), as_adam(options), true) {}

}  // namespace syncbn::optim
