// BatchNorm: the shared implementation of BatchNorm*d and SyncBatchNorm*d,
// on the batch-norm stages of core (syncbn/core/batch_norm.hpp).
// Numerics: docs/numerics.md.

#include "syncbn/nn/batchnorm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "layer_checks.hpp"
#include "syncbn/nn/forward_transaction.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::nn {
namespace {

std::string format_double(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

}  // namespace

BatchNorm::BatchNorm(std::string kind, int spatial_dims, std::int64_t num_features, BatchNormOptions options)
    : kind_(std::move(kind)), label_(kind_), dims_(spatial_dims), features_(num_features), options_(options) {
  SYNCBN_CHECK(num_features >= 1, kind_, ": num_features is ", num_features, ", expected >= 1");
  SYNCBN_CHECK(options.eps >= 0, kind_, ": eps is ", options.eps, ", expected >= 0");
  SYNCBN_CHECK(!options.momentum || (*options.momentum >= 0 && *options.momentum <= 1), kind_, ": momentum is ",
               options.momentum.value_or(0), ", expected a value in [0, 1] or none");
  SYNCBN_CHECK(options.ema_update == EmaUpdate::Internal || options.ema_update == EmaUpdate::Skip ||
                   options.ema_update == EmaUpdate::Deferred,
               kind_, ": ema_update ", static_cast<int>(options.ema_update),
               ", expected EmaUpdate::Internal, Skip or Deferred");
  SYNCBN_CHECK(options.virtual_batch_size >= 0, kind_, ": virtual_batch_size ", options.virtual_batch_size,
               ", expected >= 0 (0: off)");
  SYNCBN_CHECK(options.virtual_batch_size == 0 || (!options.freeze && !options.renorm), kind_,
               ": virtual_batch_size normalises with ghost batches' statistics, expected freeze = false and no renorm");
  if (options.renorm) {
    SYNCBN_CHECK(options.renorm->rmax >= 1 && options.renorm->dmax >= 0, kind_, ": renorm limits rmax ",
                 options.renorm->rmax, ", dmax ", options.renorm->dmax, ", expected rmax >= 1 and dmax >= 0");
    SYNCBN_CHECK(options.track_running_stats && !options.freeze, kind_,
                 ": renorm corrects the batch's statistics towards the running ones, expected track_running_stats = "
                 "true and freeze = false");
  }
  SYNCBN_CHECK(options.layout == ChannelLayout::First || options.layout == ChannelLayout::Last, kind_, ": layout ",
               static_cast<int>(options.layout), ", expected ChannelLayout::First or Last");
  options.activation.check(kind_);
  SYNCBN_CHECK(!options.inplace || options.activation.invertible(), kind_,
               ": inplace recovers the input from the output, expected an invertible activation (identity, "
               "leaky_relu with a slope > 0, elu), got ",
               options.activation.name());
  SYNCBN_CHECK(!options.freeze || options.track_running_stats, kind_,
               ": freeze needs running statistics to normalise with, expected track_running_stats = true, got false");
  SYNCBN_CHECK(options.dtype == DType::Float32 || options.dtype == DType::Float64, kind_, ": dtype ",
               dtype_name(options.dtype), ", expected float32 or float64 for parameters and running statistics");
  if (options.renorm) renorm_ = std::make_shared<RenormLimits>(*options.renorm);
  const Shape c{num_features};
  if (options.affine) {
    weight_ = register_parameter("weight", Tensor::ones(c, options.dtype, options.device));
    bias_ = register_parameter("bias", Tensor::zeros(c, options.dtype, options.device));
  }
  if (options.track_running_stats) {
    running_mean_ = register_buffer("running_mean", Tensor::zeros(c, options.dtype, options.device));
    running_var_ = register_buffer("running_var", Tensor::ones(c, options.dtype, options.device));
    batches_ = register_buffer("num_batches_tracked", Tensor::zeros(Shape{}, DType::Int64, options.device));
  }
}

std::string BatchNorm::describe() const {
  return kind_ + "(" + std::to_string(features_) + ", eps=" + format_double(options_.eps) +
         ", momentum=" + (options_.momentum ? format_double(*options_.momentum) : std::string("None")) +
         ", affine=" + (options_.affine ? "true" : "false") +
         ", track_running_stats=" + (options_.track_running_stats ? "true" : "false") +
         (options_.eps_mode == EpsMode::Clamp ? ", eps_mode=clamp" : "") + (options_.freeze ? ", freeze=true" : "") +
         (options_.virtual_batch_size > 0 ? ", virtual_batch_size=" + std::to_string(options_.virtual_batch_size)
                                          : std::string()) +
         (renorm_ ? ", renorm(rmax=" + format_double(renorm_->rmax) + ", dmax=" + format_double(renorm_->dmax) + ")"
                  : std::string()) +
         (options_.layout == ChannelLayout::Last ? ", layout=channels_last" : "") +
         (options_.activation.kind != core::ActivationKind::Identity ? ", activation=" + options_.activation.name()
                                                                      : std::string()) +
         (options_.inplace ? ", inplace=true" : "") +
         (options_.ema_update == EmaUpdate::Skip       ? ", ema_update=skip"
          : options_.ema_update == EmaUpdate::Deferred ? ", ema_update=deferred"
                                                       : "") +
         ")";
}

Parameter& BatchNorm::weight() {
  SYNCBN_CHECK(options_.affine, kind_, ": the layer is not affine, it has no weight, expected an affine layer (BatchNormOptions::affine)");
  return parameter(weight_);
}

Parameter& BatchNorm::bias() {
  SYNCBN_CHECK(options_.affine, kind_, ": the layer is not affine, it has no bias, expected an affine layer (BatchNormOptions::affine)");
  return parameter(bias_);
}

Tensor& BatchNorm::running_mean() {
  SYNCBN_CHECK(options_.track_running_stats, kind_, ": the layer does not track running statistics, expected a layer that does "
               "(BatchNormOptions::track_running_stats)");
  return buffer(running_mean_);
}

Tensor& BatchNorm::running_var() {
  SYNCBN_CHECK(options_.track_running_stats, kind_, ": the layer does not track running statistics, expected a layer that does "
               "(BatchNormOptions::track_running_stats)");
  return buffer(running_var_);
}

Tensor& BatchNorm::num_batches_tracked() {
  SYNCBN_CHECK(options_.track_running_stats, kind_, ": the layer does not track running statistics, expected a layer that does "
               "(BatchNormOptions::track_running_stats)");
  return buffer(batches_);
}

void BatchNorm::take_state_of(BatchNorm& source) {
  SYNCBN_CHECK(options_.affine == source.options_.affine &&
                   options_.track_running_stats == source.options_.track_running_stats &&
                   source.features_ == features_,
               kind_, ": take_state_of(", source.kind_, "): expected a layer of the same options and ", features_,
               " features");
  if (options_.affine) {
    share_parameter(weight_, source.parameter_object(source.weight_));
    share_parameter(bias_, source.parameter_object(source.bias_));
  }
  if (options_.track_running_stats) {
    buffer(running_mean_) = source.buffer(source.running_mean_);
    buffer(running_var_) = source.buffer(source.running_var_);
    buffer(batches_) = source.buffer(source.batches_);
  }
  train(source.is_training());
}

std::optional<Device> BatchNorm::state_device() const {
  if (options_.affine) return parameter(weight_).value.device();
  if (options_.track_running_stats) return buffer(running_mean_).device();
  return std::nullopt;
}

void BatchNorm::set_label(std::string label) { label_ = std::move(label); }

core::BatchNormForm BatchNorm::form() const noexcept {
  return {options_.layout, std::nullopt, options_.activation, options_.inplace};
}

void BatchNorm::clear_cache() { saved_ = Saved{}; }

void BatchNorm::check_input(const Tensor& input) const {
  SYNCBN_CHECK(input.defined(), label_, ": input is undefined, expected a tensor");
  const int rank = input.rank();
  const bool last = options_.layout == ChannelLayout::Last;
  if (dims_ == 1) {
    SYNCBN_CHECK(rank == 2 || rank == 3, label_, ": expected 2-D (N, C) or 3-D ", last ? "(N, L, C)" : "(N, C, L)",
                 " input, got ", rank, "-D input");
  } else {
    const int want = dims_ + 2;
    const char* form = dims_ == 2 ? (last ? "(N, H, W, C)" : "(N, C, H, W)") : (last ? "(N, D, H, W, C)" : "(N, C, D, H, W)");
    SYNCBN_CHECK(rank == want, label_, ": expected ", want, "-D input ", form, ", got ", rank, "-D input");
  }
  const std::int64_t channels = last ? input.size(rank - 1) : input.size(1);
  SYNCBN_CHECK(channels == features_, label_, ": input has ", channels, " channels", last ? " (last dimension)" : "",
               ", expected ", features_);
  const bool wide = options_.dtype == DType::Float64;
  const bool ok = wide ? input.dtype() == DType::Float64
                       : (input.dtype() == DType::Float32 || is_reduced_precision(input.dtype()));
  SYNCBN_CHECK(ok, label_, ": input has dtype ", dtype_name(input.dtype()), ", expected ",
               wide ? "float64" : "float32, float16 or bfloat16", " (parameters are ", dtype_name(options_.dtype), ")");
  if (auto device = state_device()) {
    SYNCBN_CHECK(input.device() == *device, label_, ": input is on ", input.device(), ", expected ", *device,
                 " (the device of its parameters)");
  }
}

std::string BatchNorm::StatsCover::describe() const {
  if (ghost_group >= 0)
    return "over ghost batch " + std::to_string(ghost_group) + " (rows " + std::to_string(ghost_group * ghost_rows) +
           " to " + std::to_string((ghost_group + 1) * ghost_rows - 1) + " of the batch)";
  if (replica >= 0) return "over replica " + std::to_string(replica) + "'s shard (its own statistics)";
  return "over the whole batch";
}

BatchNorm::Finalized BatchNorm::finalize_statistics(const ShardStats& merged, StatsCover cover) const {
  // Called whenever the batch's own statistics normalise it: in training and
  // in eval without running statistics, where PyTorch refuses a single value
  // per channel as well (its variance is 0 and y would be the bias).
  SYNCBN_CHECK(merged.count != 1, label_, ": expected more than 1 value per channel ",
               is_training() ? "when training" : "for batch statistics (track_running_stats is off)",
               ", got 1 (input of ", features_, " channels with one value each ", cover.describe(), ")");
  auto [invstd, unbiased_var] =
      core::batch_norm_variance(merged, options_.eps, options_.eps_mode == EpsMode::Clamp);
  return Finalized{NormStats{merged.count, merged.mean, std::move(invstd)}, std::move(unbiased_var)};
}

void BatchNorm::track_running(const Finalized& finalized) {
  if (!is_training() || !options_.track_running_stats || options_.ema_update == EmaUpdate::Skip) return;
  // The kept and accumulated statistics are shared with the replicas: only
  // copy 0 (or the user's module itself) changes them, as Internal updates
  // the module from copy 0 (the other copies' buffers are refreshed from it
  // every forward).
  const bool owner = replica_id() <= 0;
  Finalized update = finalized;
  if (accumulator_->every > 1) {
    if (!owner) return;
    record_undo(RunningState::Accumulator);
    std::optional<Finalized> merged = accumulate(finalized);
    if (!merged) return;
    update = std::move(*merged);
  }
  switch (options_.ema_update) {
    case EmaUpdate::Internal:
      record_undo(RunningState::Buffers);
      update_running(update);
      return;
    case EmaUpdate::Skip: return;
    case EmaUpdate::Deferred:
      if (owner) {
        record_undo(RunningState::Pending);
        pending_->push_back(update);
      }
      return;
  }
}

void BatchNorm::record_undo(RunningState what) {
  if (!ForwardTransaction::active()) return;
  switch (what) {
    case RunningState::Buffers: {
      // The buffers' own tensors (the storage that replicas alias) and copies.
      std::vector<std::pair<Tensor, Tensor>> buffers;
      for (const std::size_t index : {running_mean_, running_var_, batches_})
        buffers.emplace_back(buffer(index), buffer(index).clone());
      ForwardTransaction::record([buffers = std::move(buffers)] {
        for (const auto& [target, before] : buffers) target.copy_(before);
      });
      return;
    }
    case RunningState::Pending:
      ForwardTransaction::record([pending = pending_, size = pending_->size()] { pending->resize(size); });
      return;
    case RunningState::Accumulator:
      ForwardTransaction::record([accumulator = accumulator_, before = *accumulator_] { *accumulator = before; });
      return;
  }
}

// Note [Micro-batch accumulation]
// The running statistics of n micro-batches taken as one batch need the
// union's mean and unbiased variance. Each micro-batch's (count, mean, M2)
// is recovered from its finalized statistics (M2 = unbiased variance x
// (count - 1); a training batch has count 0 or more than 1) and merged in
// float64 with Chan's pairwise update, exactly as the batch of all of them
// would be merged from shards; after the n-th, the union's statistics make
// one update.
std::optional<BatchNorm::Finalized> BatchNorm::accumulate(const Finalized& batch) {
  Accumulator& acc = *accumulator_;
  if (batch.norm.count > 0) {
    const auto mean = batch.norm.mean.to_vector<double>(), var = batch.unbiased_var.to_vector<double>();
    std::vector<double> m2(var.size());
    for (std::size_t j = 0; j < var.size(); ++j) m2[j] = var[j] * static_cast<double>(batch.norm.count - 1);
    acc.moments.merge(batch.norm.count, mean, m2);
  }
  if (++acc.seen < acc.every) return std::nullopt;
  Finalized merged;
  const core::HostMoments& union_of = acc.moments;
  merged.norm.count = union_of.count;
  if (union_of.count > 0) {
    const Device device = batch.norm.mean.device();
    const Shape c{static_cast<std::int64_t>(union_of.mean.size())};
    std::vector<double> unbiased(union_of.m2.size());
    for (std::size_t j = 0; j < unbiased.size(); ++j)
      unbiased[j] = union_of.count > 1 ? union_of.m2[j] / static_cast<double>(union_of.count - 1) : 0.0;
    merged.norm.mean = Tensor::from_vector(union_of.mean, c, device);
    merged.unbiased_var = Tensor::from_vector(unbiased, c, device);
  }
  const std::int64_t every = acc.every;
  acc = Accumulator{};
  acc.every = every;
  return merged;
}

void BatchNorm::accumulate_statistics(std::int64_t micro_batches) {
  SYNCBN_CHECK(micro_batches >= 1, label_, ": accumulate_statistics: ", micro_batches,
               " micro-batches per update, expected >= 1");
  *accumulator_ = Accumulator{};
  accumulator_->every = micro_batches;
}

std::int64_t BatchNorm::accumulation() const noexcept { return accumulator_->every; }
std::int64_t BatchNorm::accumulated() const noexcept { return accumulator_->seen; }

std::int64_t BatchNorm::apply_running_updates() {
  const std::vector<Finalized> updates = std::move(*pending_);
  pending_->clear();
  for (const Finalized& f : updates) update_running(f);
  return static_cast<std::int64_t>(updates.size());
}

std::int64_t BatchNorm::pending_running_updates() const noexcept { return static_cast<std::int64_t>(pending_->size()); }

// Note [Ghost batch norm]
// A ghost batch is a group of consecutive samples of the batch. Each sample
// (row) of the shard gets its own moments, the rows' moments are merged per
// ghost batch (per replica here; over the whole batch in replica order by
// SyncBatchNorm, so a group may span replicas), and every row is normalised
// and back-propagated with its group's statistics and gradient sums: the
// stages of batch norm, applied row by row, so both backends run it. The
// running statistics follow the first ghost batch, tensorpack's choice: it
// is what per-device batch norm of a device holding that group would give.
std::vector<BatchNorm::Finalized> BatchNorm::ghost_groups(const std::vector<ShardStats>& rows, Device device) const {
  const std::int64_t v = options_.virtual_batch_size;
  const auto n = static_cast<std::int64_t>(rows.size());
  SYNCBN_CHECK(n % v == 0, label_, ": a batch of ", n, " samples is not a multiple of virtual_batch_size ", v,
               ", expected a multiple");
  std::vector<Finalized> groups;
  for (std::int64_t g = 0; g < n / v; ++g) {
    // merge_moments takes up to kMaxReplicas parts: merge longer groups in runs.
    ShardStats merged = rows[static_cast<std::size_t>(g * v)];
    for (std::int64_t first = g * v + 1; first < (g + 1) * v;) {
      const std::int64_t last = std::min((g + 1) * v, first + core::kMaxReplicas - 1);
      std::vector<ShardStats> parts{merged};
      parts.insert(parts.end(), rows.begin() + first, rows.begin() + last);
      merged = core::merge_moments(parts, device);
      first = last;
    }
    groups.push_back(finalize_statistics(merged, StatsCover{.ghost_group = g, .ghost_rows = v}));
  }
  return groups;
}

std::vector<BatchNorm::GradSums> BatchNorm::ghost_group_sums(const std::vector<GradSums>& rows) const {
  const auto v = static_cast<std::size_t>(options_.virtual_batch_size);
  std::vector<GradSums> sums;
  for (std::size_t first = 0; first < rows.size(); first += v) {
    GradSums total{rows[first].sum_dy.clone(), rows[first].sum_dy_xmu.clone()};
    for (std::size_t i = first + 1; i < first + v; ++i) {
      core::add_(total.sum_dy, rows[i].sum_dy.onto(total.sum_dy.device()));
      core::add_(total.sum_dy_xmu, rows[i].sum_dy_xmu.onto(total.sum_dy.device()));
    }
    sums.push_back(std::move(total));
  }
  return sums;
}

std::vector<BatchNorm::NormStats> BatchNorm::ghost_statistics(const std::vector<ShardStats>& rows) {
  const Device device = rows.empty() ? options_.device : rows.front().mean.device();
  const std::vector<Finalized> groups = ghost_groups(rows, device);
  if (groups.empty())
    track_running(Finalized{});  // an empty batch counts as a batch
  else
    track_running(groups.front());
  std::vector<NormStats> per_row;
  const auto v = static_cast<std::size_t>(options_.virtual_batch_size);
  for (std::size_t i = 0; i < rows.size(); ++i) per_row.push_back(groups[i / v].norm);
  return per_row;
}

std::vector<BatchNorm::GradSums> BatchNorm::ghost_gradient_sums(const std::vector<GradSums>& rows) {
  const std::vector<GradSums> sums = ghost_group_sums(rows);
  std::vector<GradSums> per_row;
  const auto v = static_cast<std::size_t>(options_.virtual_batch_size);
  for (std::size_t i = 0; i < rows.size(); ++i) per_row.push_back(sums[i / v]);
  return per_row;
}

Tensor BatchNorm::ghost_forward(const Tensor& input, const Tensor& weight, const Tensor& bias, Saved& saved) {
  const std::int64_t n = input.size(0);
  std::vector<ShardStats> rows;
  for (std::int64_t i = 0; i < n; ++i) rows.push_back(core::batch_norm_moments(input.rows(i, i + 1), options_.layout));
  std::vector<NormStats> norms = ghost_statistics(rows);
  const core::BatchNormForm how = form();
  Tensor out = options_.inplace ? input : Tensor::empty(input.shape(), input.dtype(), input.device());
  for (std::int64_t i = 0; i < n; ++i) {
    const NormStats& norm = norms[static_cast<std::size_t>(i)];
    Tensor coef = core::batch_norm_coefficients(norm.mean, norm.invstd, weight, bias, options_.dtype);
    if (options_.inplace)
      core::batch_norm_apply_(input.rows(i, i + 1), coef, how);
    else
      out.rows(i, i + 1).copy_(core::batch_norm_apply(input.rows(i, i + 1), coef, how));
    saved.ghost_coef.push_back(std::move(coef));
  }
  saved.ghost_norm = std::move(norms);
  return out;
}

Tensor BatchNorm::ghost_backward(const Tensor& grad_output) {
  const Tensor& input = saved_.input;
  const std::int64_t n = input.size(0);
  const core::BatchNormForm how = form();
  std::vector<GradSums> local;
  for (std::int64_t i = 0; i < n; ++i)
    local.push_back(core::batch_norm_grad_sums(grad_output.rows(i, i + 1), input.rows(i, i + 1),
                                               saved_.ghost_coef[static_cast<std::size_t>(i)], how));
  const std::vector<GradSums> totals = ghost_gradient_sums(local);
  const Tensor weight = options_.affine ? parameter(weight_).value : Tensor();
  const std::optional<double> clamp_eps =
      options_.eps_mode == EpsMode::Clamp && options_.eps > 0 ? std::optional<double>(options_.eps) : std::nullopt;
  Tensor dx = Tensor::empty(input.shape(), input.dtype(), input.device());
  for (std::int64_t i = 0; i < n; ++i) {
    const auto at = static_cast<std::size_t>(i);
    const NormStats& norm = saved_.ghost_norm[at];
    const Tensor coef_b =
        core::batch_norm_backward_coefficients(norm.count, norm.invstd, weight, totals[at], options_.dtype, clamp_eps);
    dx.rows(i, i + 1).copy_(
        core::batch_norm_backward_apply(grad_output.rows(i, i + 1), input.rows(i, i + 1), saved_.ghost_coef[at], coef_b, how));
    if (options_.affine) core::batch_norm_param_grads(parameter(weight_).grad, parameter(bias_).grad, norm.invstd, local[at]);
  }
  return dx;
}

void BatchNorm::set_renorm_limits(RenormLimits limits) {
  SYNCBN_CHECK(renorm_ != nullptr, label_, ": set_renorm_limits on a layer without renorm, expected "
               "BatchNormOptions::renorm set at construction");
  SYNCBN_CHECK(limits.rmax >= 1 && limits.dmax >= 0, label_, ": set_renorm_limits: rmax ", limits.rmax, ", dmax ",
               limits.dmax, ", expected rmax >= 1 and dmax >= 0");
  *renorm_ = limits;
  options_.renorm = limits;
}

std::optional<RenormLimits> BatchNorm::renorm_limits() const {
  return renorm_ ? std::optional<RenormLimits>(*renorm_) : std::nullopt;
}

void BatchNorm::update_running(const Finalized& finalized) {
  if (finalized.norm.count == 0) {
    // An empty batch has no statistics, but it counts as a batch, as in
    // PyTorch: the cumulative average (momentum none) divides by the count.
    Tensor& batches = buffer(batches_);
    batches.fill_(static_cast<double>(batches.to_vector<std::int64_t>().front() + 1));
    return;
  }
  core::update_running_stats(buffer(running_mean_), buffer(running_var_), buffer(batches_), finalized.norm.mean,
                             finalized.unbiased_var, options_.momentum);
}

BatchNorm::NormStats BatchNorm::batch_statistics(const ShardStats& shard) {
  // Unsynchronized statistics are the whole batch's for the user's own
  // module, and one shard's for a replica (or a SyncBatchNorm in eval).
  const Finalized finalized = finalize_statistics(shard, StatsCover{.replica = replica_id()});
  track_running(finalized);
  return finalized.norm;
}

BatchNorm::GradSums BatchNorm::gradient_sums(const GradSums& local) { return local; }

// The in-place mode divides by each channel's scale, invstd * weight.
void BatchNorm::check_inplace_weight() const {
  if (!options_.inplace || !options_.affine) return;
  const std::vector<double> w = parameter(weight_).value.to_vector<double>();
  for (std::size_t j = 0; j < w.size(); ++j)
    SYNCBN_CHECK(w[j] != 0, label_, ": inplace recovers the input through each channel's weight, expected non-zero "
                 "weights, got 0 in channel ", j);
}

Tensor BatchNorm::forward(const Tensor& input) {
  check_replica_thread();
  check_input(input);
  check_inplace_weight();
  // Note [All-or-nothing forward]: a failure below undoes the running
  // statistics' update, and saved_ is replaced only once all went well.
  ForwardTransaction transaction;
  Saved next;
  // Frozen: the running statistics in training too (and no update of them).
  next.batch_stats = !options_.freeze && (is_training() || !options_.track_running_stats);
  Tensor weight = options_.affine ? parameter(weight_).value : Tensor();
  Tensor bias = options_.affine ? parameter(bias_).value : Tensor();
  next.ghost = options_.virtual_batch_size > 0 && next.batch_stats && is_training();
  if (next.ghost) {
    Tensor out = ghost_forward(input, weight, bias, next);
    next.input = input;
    saved_ = std::move(next);
    return out;
  }
  const core::BatchNormForm how = form();
  NormStats norm;
  const bool renorm = renorm_ != nullptr && next.batch_stats && is_training();
  // Renorm corrects towards the running statistics before this batch's update.
  const Tensor running_mean_before = renorm ? buffer(running_mean_).clone() : Tensor();
  const Tensor running_var_before = renorm ? buffer(running_var_).clone() : Tensor();
  if (next.batch_stats) {
    norm = batch_statistics(core::batch_norm_moments(input, options_.layout));
  } else {
    // Eval with running statistics: constants, so count 0 (backward then
    // leaves the batch terms out).
    norm.mean = buffer(running_mean_).to(DType::Float64);
    norm.invstd = core::batch_norm_invstd(buffer(running_var_), options_.eps, options_.eps_mode == EpsMode::Clamp);
  }
  if (renorm) std::tie(weight, bias) = renorm_affine(norm, running_mean_before, running_var_before, weight, bias, next);
  Tensor coef = core::batch_norm_coefficients(norm.mean, norm.invstd, weight, bias, options_.dtype);
  Tensor out;
  if (options_.inplace) {
    core::batch_norm_apply_(input, coef, how);
    out = input;
  } else {
    out = core::batch_norm_apply(input, coef, how);
  }
  next.input = options_.inplace ? out : input;
  next.coef = std::move(coef);
  next.invstd = std::move(norm.invstd);
  next.count = norm.count;
  saved_ = std::move(next);
  return out;
}

// Note [Batch renormalization]: y = w (x_hat r + d) + b is batch norm with
// weight w r and bias w d + b, so the stages stay those of batch norm; r and
// d are constants of backward (Ioffe 2017), whose input gradient is then
// batch norm's with weight w r, and dw = r sum(dy x_hat) + d sum(dy).
std::pair<Tensor, Tensor> BatchNorm::renorm_affine(const NormStats& norm, const Tensor& running_mean_before,
                                                   const Tensor& running_var_before, const Tensor& weight,
                                                   const Tensor& bias, Saved& saved) const {
  const RenormLimits limits = *renorm_;
  const auto mean = norm.mean.to_vector<double>(), invstd = norm.invstd.to_vector<double>();
  const auto running_mean = running_mean_before.to_vector<double>();
  const auto running_var = running_var_before.to_vector<double>();
  const std::vector<double> w = options_.affine ? weight.to_vector<double>() : std::vector<double>(mean.size(), 1.0);
  const std::vector<double> b = options_.affine ? bias.to_vector<double>() : std::vector<double>(mean.size(), 0.0);
  std::vector<double> w_eff(mean.size()), b_eff(mean.size());
  for (std::size_t j = 0; j < mean.size(); ++j) {
    // The running standard deviation as eval mode would use it (EpsMode).
    const double sigma = options_.eps_mode == EpsMode::Clamp ? std::sqrt(std::max(running_var[j], options_.eps))
                                                             : std::sqrt(running_var[j] + options_.eps);
    const double r = std::clamp(1.0 / (invstd[j] * sigma), 1.0 / limits.rmax, limits.rmax);
    const double d = std::clamp((mean[j] - running_mean[j]) / sigma, -limits.dmax, limits.dmax);
    saved.renorm_r.push_back(r);
    saved.renorm_d.push_back(d);
    w_eff[j] = w[j] * r;
    b_eff[j] = w[j] * d + b[j];
  }
  const Shape c{static_cast<std::int64_t>(mean.size())};
  const Device device = running_mean_before.device();
  Tensor w_out = Tensor::from_vector(w_eff, c, device).to(options_.dtype);
  saved.renorm_weight = w_out;
  return {std::move(w_out), Tensor::from_vector(b_eff, c, device).to(options_.dtype)};
}

Tensor BatchNorm::backward(const Tensor& grad_output) {
  check_replica_thread();
  const Saved& saved = saved_;
  detail::check_backward(saved.input.defined(), grad_output, saved.input.shape(), label_);
  detail::check_tensor(grad_output, label_, "grad_output", saved.input.device(), saved.input.dtype());
  if (saved.ghost) return ghost_backward(grad_output);
  const core::BatchNormForm how = form();
  const GradSums local = core::batch_norm_grad_sums(grad_output, saved.input, saved.coef, how);
  // With batch statistics the mean and variance depend on every input, so
  // the sums over the whole batch enter dx; with running statistics they do not.
  const GradSums total = saved.batch_stats ? gradient_sums(local) : local;
  const Tensor weight = saved.renorm_weight.defined() ? saved.renorm_weight
                        : options_.affine             ? parameter(weight_).value
                                                      : Tensor();
  const std::optional<double> clamp_eps =
      options_.eps_mode == EpsMode::Clamp && options_.eps > 0 ? std::optional<double>(options_.eps) : std::nullopt;
  const Tensor coef_b = core::batch_norm_backward_coefficients(saved.batch_stats ? saved.count : 0, saved.invstd,
                                                               weight, total, options_.dtype, clamp_eps);
  // Frozen affine parameters are constants: no gradient (MegEngine detaches them).
  const ParamShare share = saved.batch_stats ? param_share() : ParamShare::Local;
  if (options_.affine && !options_.freeze && share != ParamShare::None) {
    const GradSums& sums = share == ParamShare::Whole ? total : local;
    if (saved.renorm_r.empty()) {
      core::batch_norm_param_grads(parameter(weight_).grad, parameter(bias_).grad, saved.invstd, sums);
    } else {
      // d/dw of w (x_hat r + d) + b: r sum(dy x_hat) + d sum(dy) (r, d constants).
      const Parameter& w = parameter(weight_);
      const Shape c{features_};
      const Tensor g_xhat = Tensor::zeros(c, options_.dtype, w.grad.device());
      const Tensor g_bias = Tensor::zeros(c, options_.dtype, w.grad.device());
      core::batch_norm_param_grads(g_xhat, g_bias, saved.invstd, sums);
      const auto gx = g_xhat.to_vector<double>(), gb = g_bias.to_vector<double>();
      std::vector<double> gw(gx.size());
      for (std::size_t j = 0; j < gx.size(); ++j) gw[j] = saved.renorm_r[j] * gx[j] + saved.renorm_d[j] * gb[j];
      core::add_(w.grad, Tensor::from_vector(gw, c, w.grad.device()).to(options_.dtype));
      core::add_(parameter(bias_).grad, g_bias);
    }
  }
  return core::batch_norm_backward_apply(grad_output, saved.input, saved.coef, coef_b, how);
}

std::int64_t accumulate_statistics(Module& module, std::int64_t micro_batches) {
  SYNCBN_CHECK(micro_batches >= 1, "accumulate_statistics: ", micro_batches, " micro-batches per update, expected >= 1");
  std::int64_t layers = 0;
  if (auto* bn = dynamic_cast<BatchNorm*>(&module)) {
    bn->accumulate_statistics(micro_batches);
    ++layers;
  }
  for (const auto& [name, child] : module.children()) layers += accumulate_statistics(*child, micro_batches);
  return layers;
}

std::int64_t apply_running_updates(Module& module) {
  std::int64_t applied = 0;
  if (auto* bn = dynamic_cast<BatchNorm*>(&module)) applied += bn->apply_running_updates();
  for (const auto& [name, child] : module.children()) applied += apply_running_updates(*child);
  return applied;
}

}  // namespace syncbn::nn
