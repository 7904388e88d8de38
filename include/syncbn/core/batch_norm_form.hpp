#pragma once
// How the element-wise batch-norm stages read their tensors: the channels'
// layout and the fused activation (syncbn/core/batch_norm.hpp). A header of
// its own, without tensors, so that the backends' kernel tables (compiled by
// nvcc too) can name them.

#include <cstdint>
#include <optional>
#include <string>

#include "syncbn/core/channel_layout.hpp"

namespace syncbn::core {

/// The activations batch_norm_apply can fuse after the affine map
/// (inplace_abn's set).
enum class ActivationKind : std::uint8_t { Identity, Relu, LeakyRelu, Elu };

/// An activation fused into the element-wise stages: y = act(z) with z the
/// batch-normalised value. act'(z) is 1 for z > 0, else 0 (relu), alpha
/// (leaky_relu) or alpha * exp(z) (elu), PyTorch's choices at z = 0.
struct Activation {
  ActivationKind kind = ActivationKind::Identity;
  /// LeakyRelu's negative slope (>= 0), Elu's alpha (> 0); unused otherwise.
  double alpha = 0.0;

  static constexpr Activation identity() noexcept { return {}; }
  static constexpr Activation relu() noexcept { return {ActivationKind::Relu, 0.0}; }
  static constexpr Activation leaky_relu(double negative_slope = 0.01) noexcept {
    return {ActivationKind::LeakyRelu, negative_slope};
  }
  static constexpr Activation elu(double alpha = 1.0) noexcept { return {ActivationKind::Elu, alpha}; }
  /// Whether z can be recovered from y (identity, leaky_relu with a slope
  /// > 0, elu): what the in-place mode needs.
  bool invertible() const noexcept;
  /// e.g. "relu", "leaky_relu(0.01)".
  std::string name() const;
  /// Throws InvalidArgument naming `op` for an unknown kind, a leaky_relu
  /// slope that is not finite and >= 0, or an elu alpha that is not finite
  /// and > 0.
  void check(const std::string& op) const;
};

/// How the element-wise stages read their tensors. x (and y, dx) have
/// `layout`; grad_output has `grad_layout`, x's when unset (a grad_output in
/// the other layout is brought to x's first). With `from_output` the backward
/// stages read y = act(z) where they would read x, recovering x - mean =
/// (act^-1(y) - shift) / scale (the in-place mode, where x is not kept, as
/// inplace_abn): it needs an invertible activation, and a channel whose
/// scale (invstd * weight) is 0 gets non-finite sums.
struct BatchNormForm {
  ChannelLayout layout = ChannelLayout::First;
  std::optional<ChannelLayout> grad_layout = std::nullopt;
  Activation activation = {};
  bool from_output = false;
};

}  // namespace syncbn::core
