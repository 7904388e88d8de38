#pragma once
// Moving a torch module's parameters and buffers (by name) into another
// module of the same structure: the conversions, the runner's replicas and
// its steps do it.

#include <torch/nn/module.h>

namespace syncbn::libtorch::detail {

// `to`'s parameters and buffers (recursively) become copies of `from`'s of the same
// names, their dtype included (Tensor::set_data: `to`'s tensors stay the
// ones it registered).
inline void carry_state(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  const auto params = from.named_parameters();
  for (auto& item : to.named_parameters()) item.value().set_data(params[item.key()].detach().clone());
  const auto buffers = from.named_buffers();
  for (auto& item : to.named_buffers()) item.value().set_data(buffers[item.key()].detach().clone());
}

// `to`'s parameters and buffers (recursively) take the values of `from`'s
// of the same names, in place (the dtypes already agree).
inline void copy_values(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  const auto params = from.named_parameters();
  for (auto& item : to.named_parameters()) item.value().copy_(params[item.key()]);
  const auto buffers = from.named_buffers();
  for (auto& item : to.named_buffers()) item.value().copy_(buffers[item.key()]);
}

}  // namespace syncbn::libtorch::detail
