#pragma once
// Batch normalization in stages, on tensors of any device: the building
// blocks of the batch-norm layers and of any other way to synchronise them
// (the nn layers exchange the stages' results between replicas).
//
//   forward:  batch_norm_moments (per shard) -> merge_moments (over shards)
//             -> batch_norm_variance -> batch_norm_coefficients -> batch_norm_apply
//   backward: batch_norm_grad_sums (per shard) -> (summed over shards)
//             -> batch_norm_backward_coefficients -> batch_norm_backward_apply,
//             and batch_norm_param_grads for the shard's weight and bias gradients.
//
// The input x is viewed as (N, C, L): dimension 1 holds the channels, the
// dimensions after it are flattened; or, channels-last, as (N, L, C) with
// the channels in the last dimension (ChannelLayout). Per-channel tensors
// are float64 of shape (C) on x's device. Numerics, tolerances and
// determinism: docs/numerics.md. CUDA stages are queued on the device's
// stream and return without waiting.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "syncbn/core/batch_norm_form.hpp"
#include "syncbn/core/tensor.hpp"

namespace syncbn::core {

/// x (N, C, *) permuted to channels-last (N, *, C), and back: new tensors.
/// Rank >= 2 (rank 2 is a copy), any dtype.
Tensor to_channels_last(const Tensor& x);
Tensor to_channels_first(const Tensor& x);

/// Per-channel moments of a batch or shard: the number of values each
/// channel has, their mean and their M2 (sum of squared deviations from the
/// mean); float64 tensors of shape (C).
struct ChannelMoments {
  std::int64_t count = 0;
  Tensor mean;
  Tensor m2;
};

/// Per-channel sums of a batch or shard for the backward (float64, shape
/// (C)): sum(dy), sum(dy * (x - mean)) and sum(x - mean), about the mean of
/// the forward's coefficients. Where that mean is a batch's, it is exact to
/// about 1e-7 of the spread (Note [The exact mean from the backward] in
/// core/batch_norm.cpp), and sum(x - mean) over the whole group corrects
/// it: the stages below that take a group's total and its count
/// work about the group's exact mean. An undefined sum_xmu counts as zero
/// (sums about a mean known to be exact).
struct ChannelGradSums {
  Tensor sum_dy;
  Tensor sum_dy_xmu;
  Tensor sum_xmu;
};

/// What normalisation needs beyond the mean, from merged moments.
struct BatchNormVariance {
  /// 1 / sqrt(var + eps), or 1 / sqrt(max(var, eps)) with eps_clamp, from
  /// the biased variance var = M2 / count.
  Tensor invstd;
  /// M2 / (count - 1), what the running variance takes (0 for count <= 1).
  Tensor unbiased_var;
};

/// The moments of x (rank >= 2; float32, float64, float16 or bfloat16):
/// count = N * L values per channel, mean and M2 accumulated in float64 from
/// values shifted by each channel's first element. An empty x has count 0
/// and zero moments.
ChannelMoments batch_norm_moments(const Tensor& x, ChannelLayout layout = ChannelLayout::First);

/// The moments of the union of `parts` (Chan et al.'s update, in the given
/// order; parts with count 0 are skipped), on `device`. Parts on other
/// memory than `device` are copied there; the others are read in place.
/// Every part has the same number of channels; 1 to kMaxReplicas parts.
ChannelMoments merge_moments(std::span<const ChannelMoments> parts, Device device);

/// Per-channel moments in host memory, float64, for the merges made on the
/// host: across processes in rank order (every rank runs this same scalar
/// code, compiled once, so every rank gets the same bits whatever its CPU)
/// and the union of micro-batches. Device tensors merge with merge_moments.
struct HostMoments {
  std::int64_t count = 0;
  std::vector<double> mean, m2;

  /// Becomes the union of itself and a part of `count` values per channel
  /// with the given mean and M2 (Chan et al.'s pairwise update); a part with
  /// count 0 changes nothing. InvalidArgument for a negative count or for a
  /// part whose channel count differs from what was merged before.
  void merge(std::int64_t count, std::span<const double> mean, std::span<const double> m2);
};

/// invstd and the unbiased variance of merged moments (eps >= 0).
BatchNormVariance batch_norm_variance(const ChannelMoments& merged, double eps, bool eps_clamp);

/// invstd from a variance tensor itself (float32 or float64, shape (C)), as
/// eval mode normalises with the running variance: 1 / sqrt(var + eps) or
/// 1 / sqrt(max(var, eps)). Returns float64 (C) on var's device.
Tensor batch_norm_invstd(const Tensor& var, double eps, bool eps_clamp);

/// Counts one more batch in `num_batches_tracked` (an int64 scalar) and
/// moves the running statistics towards the batch's: running = (1 - f) *
/// running + f * batch, with f = momentum, or f = 1 / num_batches_tracked
/// (a cumulative average) for std::nullopt. running_mean and running_var
/// share a floating dtype and the device of mean and unbiased_var.
void update_running_stats(const Tensor& running_mean, const Tensor& running_var, const Tensor& num_batches_tracked,
                          const Tensor& mean, const Tensor& unbiased_var, std::optional<double> momentum);

/// Batch Renormalization's correction of a batch's statistics towards the
/// running ones (Ioffe 2017), per channel: r = clamp(sigma_batch / sigma,
/// 1/rmax, rmax) and d = clamp((mean - running_mean) / sigma, -dmax, dmax),
/// with sigma the running standard deviation as eval mode uses it
/// (sqrt(running_var + eps), or sqrt(max(running_var, eps)) with eps_clamp)
/// and sigma_batch = 1 / invstd. mean and invstd are float64 (C);
/// running_mean and running_var share a float dtype and their device.
/// Returns {r, d}, float64 (C) on that device.
struct RenormFactors {
  Tensor r;
  Tensor d;
};
RenormFactors batch_renorm_factors(const Tensor& mean, const Tensor& invstd, const Tensor& running_mean,
                                   const Tensor& running_var, double eps, bool eps_clamp, double rmax, double dmax);

/// The per-channel coefficients of batch_norm_apply from the mean, invstd
/// and the optional affine weight and bias (undefined tensors: 1 and 0).
/// `param_dtype` is float64 for float64 input and float32 otherwise; weight
/// and bias, when defined, have it. The result's layout belongs to the
/// backend of its device: pass it only to this file's functions.
Tensor batch_norm_coefficients(const Tensor& mean, const Tensor& invstd, const Tensor& weight, const Tensor& bias,
                               DType param_dtype);

/// Storage for the fused relu's mask of x (Note [The relu mask] in
/// core/batch_norm.cpp): z > 0 as bits, which batch_norm_apply fills and
/// the backward stages read instead of recomputing z (the same gradients,
/// faster). An int64 tensor on x's device where the stages keep one (relu
/// from x, CPU, float32 or 16-bit data); undefined otherwise, which every
/// stage takes as "recompute".
Tensor batch_norm_relu_mask(const Tensor& x, const BatchNormForm& form);

/// y = act((x - mean) * invstd * weight + bias), with the coefficients of
/// batch_norm_coefficients and form.activation; y has x's shape, dtype and
/// device (and layout). A defined relu_mask (batch_norm_relu_mask of x) is
/// filled with this forward's mask.
Tensor batch_norm_apply(const Tensor& x, const Tensor& coefficients, const BatchNormForm& form = {},
                        const Tensor& relu_mask = {});

/// The same, written into x itself (the in-place mode; x must not share
/// memory with a tensor still needed).
void batch_norm_apply_(const Tensor& x, const Tensor& coefficients, const BatchNormForm& form = {});

/// This shard's sum(dz), sum(dz * (x - mean)) and sum(x - mean) per
/// channel, dz = dy * act'(z), with the mean of the forward's coefficients. `saved` is x, or y
/// with form.from_output; grad_output has its dtype and device, and its
/// shape or, in the other layout, the permuted shape.
/// A defined relu_mask is the one batch_norm_apply filled for this x.
ChannelGradSums batch_norm_grad_sums(const Tensor& grad_output, const Tensor& saved, const Tensor& coefficients,
                                     const BatchNormForm& form = {}, const Tensor& relu_mask = {});

/// The coefficients of batch_norm_backward_apply from the gradient sums over
/// all `count` values per channel of the batch (or ghost group), taken about
/// the exact mean mean + sum_xmu / count. count 0 means that the
/// statistics were constants (eval mode with running statistics), so the
/// sums do not enter dx. weight may be undefined (1). `clamp_eps`: the eps
/// of clamp mode, where a channel whose variance was clamped (invstd =
/// 1 / sqrt(eps)) has no gradient through its variance.
Tensor batch_norm_backward_coefficients(std::int64_t count, const Tensor& invstd, const Tensor& weight,
                                        const ChannelGradSums& total, DType param_dtype,
                                        std::optional<double> clamp_eps = std::nullopt);

/// Adds the parameter gradients of a shard (or of the whole batch) from its
/// gradient sums `part`, about the exact mean of the group whose total
/// sums and count are `total` and `count` (count 0: constant statistics, no
/// correction): grad_weight += (part.sum_dy_xmu - total.sum_xmu / count *
/// part.sum_dy) * invstd and grad_bias += part.sum_dy (an undefined gradient
/// tensor is skipped).
void batch_norm_param_grads(const Tensor& grad_weight, const Tensor& grad_bias, const Tensor& invstd,
                            const ChannelGradSums& part, const ChannelGradSums& total, std::int64_t count);

/// dx = (dz - mean(dz) - (x - mean) * mean(dz * (x - mean)) * invstd^2) *
/// invstd * weight, with the forward's and the backward coefficients,
/// computed in float64 and rounded once to x's dtype; dx has saved's shape
/// and layout (saved and grad_output as for batch_norm_grad_sums).
/// relu_mask as for batch_norm_grad_sums.
Tensor batch_norm_backward_apply(const Tensor& grad_output, const Tensor& saved, const Tensor& coefficients,
                                 const Tensor& backward_coefficients, const BatchNormForm& form = {},
                                 const Tensor& relu_mask = {});

}  // namespace syncbn::core
