#pragma once
// Parameter groups without weight decay for batch-norm parameters and biases.

#include <cstdint>

#include "syncbn/nn/module.hpp"
#include "syncbn/optim/optimizer.hpp"

namespace syncbn::optim {

/// Which parameters split_weight_decay exempts from weight decay; combine
/// with `|`.
enum class NoDecay : std::uint8_t {
  None = 0,
  /// The weight and bias of every batch-norm layer (BatchNorm1d/2d/3d and
  /// SyncBatchNorm1d/2d/3d: every nn::BatchNorm).
  Norm = 1,
  /// Every parameter named "bias" (the last part of its dotted name), e.g.
  /// Linear's.
  Bias = 2,
};

constexpr NoDecay operator|(NoDecay a, NoDecay b) noexcept {
  return static_cast<NoDecay>(static_cast<std::uint8_t>(a) | static_cast<std::uint8_t>(b));
}
/// True when `set` contains every flag of `flag`.
constexpr bool contains(NoDecay set, NoDecay flag) noexcept {
  return (static_cast<std::uint8_t>(set) & static_cast<std::uint8_t>(flag)) == static_cast<std::uint8_t>(flag);
}

/// Two parameter groups over module.parameters(), for any optimizer
/// constructor: group 0 holds the parameters that decay, with
/// `weight_decay`; group 1 those that `exempt` selects, with weight decay 0.
/// Both keep module.parameters()' order, leave lr to the optimizer, and are
/// always present (either may be empty). The common recipe that keeps
/// weight decay off batch-norm scales and shifts:
///   optim::AdamW opt(optim::split_weight_decay(*model, 0.05), {.lr = 1e-3});
/// Call it once the module tree is final (after convert_sync_batchnorm:
/// the parameter objects stay the same, so either order works).
/// InvalidArgument unless weight_decay >= 0 and `exempt` holds only the
/// flags above.
ParamGroups split_weight_decay(nn::Module& module, double weight_decay, NoDecay exempt = NoDecay::Norm | NoDecay::Bias);

}  // namespace syncbn::optim
