// SGD: PyTorch's update rule with element-wise ops on each parameter's device.

#include "syncbn/optim/sgd.hpp"

#include "syncbn/error.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::optim {

SGD::SGD(std::vector<nn::Parameter*> params, SGDOptions options) : SGD(one_group(std::move(params)), options) {}

SGD::SGD(std::initializer_list<nn::Parameter*> params, SGDOptions options)
    : SGD(std::vector<nn::Parameter*>(params), options) {}

SGD::SGD(ParamGroups groups, SGDOptions options)
    : Optimizer("SGD", std::move(groups), options.lr, options.weight_decay), options_(options) {
  SYNCBN_CHECK(options.momentum >= 0, "SGD: momentum is ", options.momentum, ", expected >= 0");
  SYNCBN_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0),
               "SGD: nesterov needs momentum and no dampening, got momentum ", options.momentum, " and dampening ",
               options.dampening, ", expected momentum > 0 and dampening 0");
}

std::vector<std::string> SGD::buffer_names() const {
  if (options_.momentum == 0) return {};
  return {"momentum_buffer"};
}

void SGD::update(const Group& group, nn::Parameter& p, ParamState& state) {
  Tensor g = p.grad;
  if (group.weight_decay != 0) {
    g = g.clone();
    add_(g, p.value, group.weight_decay);
  }
  if (options_.momentum != 0) {
    if (state.buffers.empty()) {
      state.buffers.push_back(g.clone());
    } else {
      axpby_(state.buffers[0], 1.0 - options_.dampening, g, options_.momentum);
    }
    const Tensor& buf = state.buffers[0];
    if (options_.nesterov) {
      g = g.clone();
      add_(g, buf, options_.momentum);
    } else {
      g = buf;
    }
  }
  add_(p.value, g, -group.lr);
}

}  // namespace syncbn::optim
