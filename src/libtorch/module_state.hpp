#pragma once
// Moving a torch module's parameters and buffers (by name) into another
// module of the same structure: the conversions, the runner's replicas and
// its steps do it.

#include <torch/nn/module.h>

namespace syncbn::libtorch::detail {

// `to`'s parameters and buffers (recursively) become copies of `from`'s of the same
// names, their dtype included, on the device each of `to`'s already is
// (Tensor::set_data: `to`'s tensors stay the ones it registered; set_data
// refuses another device).
inline void carry_state(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  const auto copy = [](const torch::Tensor& value, const torch::Tensor& place) {
    return value.detach().to(place.device(), value.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  };
  const auto params = from.named_parameters();
  for (auto& item : to.named_parameters()) item.value().set_data(copy(params[item.key()], item.value()));
  const auto buffers = from.named_buffers();
  for (auto& item : to.named_buffers()) item.value().set_data(copy(buffers[item.key()], item.value()));
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
