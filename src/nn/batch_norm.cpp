// BatchNorm: the shared implementation of BatchNorm*d and SyncBatchNorm*d,
// on the batch-norm stages of core (syncbn/core/batch_norm.hpp).
// Numerics: docs/numerics.md.

#include "syncbn/nn/batch_norm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "layer_checks.hpp"
#include "syncbn/nn/forward_transaction.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::nn {
namespace {

// Row k of a batch: ghost batch norm's segment k (a whole batch is used as it is).
Tensor row_of(const Tensor& t, std::size_t k) {
  const auto row = static_cast<std::int64_t>(k);
  return t.rows(row, row + 1);
}

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
  detail::check_layout(options.layout, kind_);
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
  own_exchange_ = exchange_ = make_exchange(nullptr, sync::kDefaultSyncTimeout);
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

void BatchNorm::set_label(std::string label) {
  label_ = std::move(label);
  const bool own = exchange_ == own_exchange_;
  own_exchange_ = make_exchange(nullptr, sync::kDefaultSyncTimeout);
  if (own) exchange_ = own_exchange_;
}

std::shared_ptr<comm::StatsExchange> BatchNorm::make_exchange(std::shared_ptr<comm::ProcessGroup> processes,
                                                              std::chrono::milliseconds timeout) const {
  return std::make_shared<comm::StatsExchange>(comm::StatsExchange::Options{label_, timeout, features_, std::move(processes)});
}

void BatchNorm::set_exchange(std::shared_ptr<comm::StatsExchange> exchange) { exchange_ = std::move(exchange); }

core::BatchNormForm BatchNorm::form() const noexcept {
  return {options_.layout, std::nullopt, options_.activation, options_.inplace};
}

void BatchNorm::clear_cache() {
  saved_ = Saved{};
  // A copy's exchanges are its own: the original's may be wired to replicas.
  own_exchange_ = exchange_ = make_exchange(nullptr, sync::kDefaultSyncTimeout);
}

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

comm::GroupStats BatchNorm::finalize_statistics(const core::ChannelMoments& merged, StatsCover cover) const {
  // Called whenever the batch's own statistics normalise it: in training and
  // in eval without running statistics, where PyTorch refuses a single value
  // per channel as well (its variance is 0 and y would be the bias).
  SYNCBN_CHECK(merged.count != 1, label_, ": expected more than 1 value per channel ",
               is_training() ? "when training" : "for batch statistics (track_running_stats is off)",
               ", got 1 (input of ", features_, " channels with one value each ", cover.describe(), ")");
  auto [invstd, unbiased_var] =
      core::batch_norm_variance(merged, options_.eps, options_.eps_mode == EpsMode::Clamp);
  return GroupStats{merged.count, merged.mean, std::move(invstd), std::move(unbiased_var)};
}

void BatchNorm::track_running(const GroupStats& batch) {
  if (!is_training() || !options_.track_running_stats || options_.ema_update == EmaUpdate::Skip) return;
  // The kept and accumulated statistics are shared with the replicas: only
  // copy 0 (or the user's module itself) changes them, as Internal updates
  // the module from copy 0 (the other copies' buffers are refreshed from it
  // every forward).
  const bool owner = replica_id() <= 0;
  GroupStats update = batch;
  if (accumulator_->every > 1) {
    if (!owner) return;
    record_undo(RunningState::Accumulator);
    std::optional<GroupStats> merged = accumulate(batch);
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
std::optional<comm::GroupStats> BatchNorm::accumulate(const GroupStats& batch) {
  Accumulator& acc = *accumulator_;
  if (batch.count > 0) {
    const auto mean = batch.mean.to_vector<double>(), var = batch.unbiased_var.to_vector<double>();
    std::vector<double> m2(var.size());
    for (std::size_t j = 0; j < var.size(); ++j) m2[j] = var[j] * static_cast<double>(batch.count - 1);
    acc.moments.merge(batch.count, mean, m2);
  }
  if (++acc.seen < acc.every) return std::nullopt;
  GroupStats merged;
  const core::HostMoments& union_of = acc.moments;
  merged.count = union_of.count;
  if (union_of.count > 0) {
    const Device device = batch.mean.device();
    const Shape c{static_cast<std::int64_t>(union_of.mean.size())};
    std::vector<double> unbiased(union_of.m2.size());
    for (std::size_t j = 0; j < unbiased.size(); ++j)
      unbiased[j] = union_of.count > 1 ? union_of.m2[j] / static_cast<double>(union_of.count - 1) : 0.0;
    merged.mean = Tensor::from_vector(union_of.mean, c, device);
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
  const std::vector<GroupStats> updates = std::move(*pending_);
  pending_->clear();
  for (const GroupStats& batch : updates) update_running(batch);
  return static_cast<std::int64_t>(updates.size());
}

std::int64_t BatchNorm::pending_running_updates() const noexcept { return static_cast<std::int64_t>(pending_->size()); }

// Note [Ghost batch norm]
// A ghost batch is a group of consecutive samples of the batch. Each sample
// (row) of the shard is a segment of the exchange with its own moments; the
// exchange merges them per ghost batch (per replica for BatchNorm; over the
// whole batch in replica and rank order for SyncBatchNorm, so a group may
// span replicas and processes), and every row is normalised and
// back-propagated with its group's statistics and gradient sums: the stages
// of batch norm, applied row by row, so both backends run it. The running
// statistics follow the first ghost batch, tensorpack's choice: it is what
// per-device batch norm of a device holding that group would give.

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

void BatchNorm::update_running(const GroupStats& batch) {
  if (batch.count == 0) {
    // An empty batch has no statistics, but it counts as a batch, as in
    // PyTorch: the cumulative average (momentum none) divides by the count.
    Tensor& batches = buffer(batches_);
    batches.fill_(static_cast<double>(batches.to_vector<std::int64_t>().front() + 1));
    return;
  }
  core::update_running_stats(buffer(running_mean_), buffer(running_var_), buffer(batches_), batch.mean,
                             batch.unbiased_var, options_.momentum);
}

// The in-place mode divides by each channel's scale, invstd * weight.
void BatchNorm::check_inplace_weight() const {
  if (!options_.inplace || !options_.affine) return;
  const std::vector<double> w = parameter(weight_).value.to_vector<double>();
  for (std::size_t j = 0; j < w.size(); ++j)
    SYNCBN_CHECK(w[j] != 0, label_, ": inplace recovers the input through each channel's weight, expected non-zero "
                 "weights, got 0 in channel ", j);
}

std::vector<comm::GroupStats> BatchNorm::exchange_statistics(const Tensor& input, Saved& next) {
  // Training merges through the layer's exchange (synchronized for a
  // SyncBatchNorm); eval without running statistics uses the shard's own.
  next.exchange = is_training() ? exchange_ : own_exchange_;
  next.home = state_device().value_or(input.device());
  std::vector<core::ChannelMoments> segments;
  if (next.segments_per_group > 0) {
    for (std::int64_t i = 0; i < input.size(0); ++i)
      segments.push_back(core::batch_norm_moments(row_of(input, static_cast<std::size_t>(i)), options_.layout));
  } else {
    segments.push_back(core::batch_norm_moments(input, options_.layout));
  }
  const bool synced = next.exchange->synchronizes();
  const comm::Finalize finalize = [this, synced](const core::ChannelMoments& merged, comm::GroupPlace place) {
    StatsCover cover;
    if (place.segments_per_group > 0) {
      cover.ghost_group = place.index;
      cover.ghost_rows = place.segments_per_group;
    } else if (!synced) {
      // Unsynchronized statistics are the whole batch's for the user's own
      // module, and one shard's for a replica.
      cover.replica = replica_id();
    }
    return finalize_statistics(merged, cover);
  };
  comm::MergedStats merged =
      next.exchange->merge(std::move(segments), next.segments_per_group, next.home, finalize);
  // Once per batch on the participant that owns the update (copy 0 of
  // replicas, after every replica has its reply; a failed exchange updates
  // nothing).
  if (merged.first_group) track_running(*merged.first_group);
  next.layout = std::move(merged.layout);
  return std::move(merged.per_segment);
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
  const bool training_stats = next.batch_stats && is_training();
  next.segments_per_group = training_stats ? options_.virtual_batch_size : 0;
  const bool renorm = renorm_ != nullptr && training_stats;
  // Renorm corrects towards the running statistics before this batch's update.
  const Tensor running_mean_before = renorm ? buffer(running_mean_).clone() : Tensor();
  const Tensor running_var_before = renorm ? buffer(running_var_).clone() : Tensor();
  std::vector<GroupStats> norms;
  if (next.batch_stats) {
    norms = exchange_statistics(input, next);
  } else {
    // Eval with running statistics: constants, so count 0 (backward then
    // leaves the batch terms out).
    norms.push_back(GroupStats{0, buffer(running_mean_).to(DType::Float64),
                               core::batch_norm_invstd(buffer(running_var_), options_.eps,
                                                       options_.eps_mode == EpsMode::Clamp),
                               Tensor()});
  }
  if (renorm)
    std::tie(weight, bias) = renorm_affine(norms.front(), running_mean_before, running_var_before, weight, bias, next);
  const core::BatchNormForm how = form();
  Tensor out = options_.inplace || next.segments_per_group == 0 ? input
                                                                : Tensor::empty(input.shape(), input.dtype(), input.device());
  next.segments.reserve(norms.size());
  for (std::size_t k = 0; k < norms.size(); ++k) {
    GroupStats& norm = norms[k];
    Tensor coef = core::batch_norm_coefficients(norm.mean, norm.invstd, weight, bias, options_.dtype);
    const Tensor x = next.segments_per_group == 0 ? input : row_of(input, k);
    // The fused relu's mask (Note [The relu mask] in core/batch_norm.cpp);
    // none in place, whose form reads the output.
    Tensor mask = core::batch_norm_relu_mask(x, how);
    if (options_.inplace)
      core::batch_norm_apply_(x, coef, how);
    else if (next.segments_per_group == 0)  // the whole batch, one segment
      out = core::batch_norm_apply(x, coef, how, mask);
    else
      row_of(out, k).copy_(core::batch_norm_apply(x, coef, how, mask));
    next.segments.push_back(SavedSegment{std::move(coef), std::move(norm.invstd), norm.count, std::move(mask)});
  }
  next.input = options_.inplace ? out : input;
  saved_ = std::move(next);
  return out;
}

// Note [Batch renormalization]: y = w (x_hat r + d) + b is batch norm with
// weight w r and bias w d + b, so the stages stay those of batch norm; r and
// d are constants of backward (Ioffe 2017), whose input gradient is then
// batch norm's with weight w r, and dw = r sum(dy x_hat) + d sum(dy).
std::pair<Tensor, Tensor> BatchNorm::renorm_affine(const GroupStats& norm, const Tensor& running_mean_before,
                                                   const Tensor& running_var_before, const Tensor& weight,
                                                   const Tensor& bias, Saved& saved) const {
  const RenormLimits limits = *renorm_;
  core::RenormFactors f =
      core::batch_renorm_factors(norm.mean, norm.invstd, running_mean_before, running_var_before, options_.eps,
                                 options_.eps_mode == EpsMode::Clamp, limits.rmax, limits.dmax);
  // In float64, rounded once to the parameters' dtype.
  const Tensor w = options_.affine ? weight.to(DType::Float64) : Tensor::ones(f.r.shape(), DType::Float64, f.r.device());
  Tensor w_eff = core::mul(w, f.r).to(options_.dtype);
  Tensor b_eff = core::mul(w, f.d);
  if (options_.affine) b_eff = core::add(b_eff, bias.to(DType::Float64));
  saved.renorm_weight = w_eff;
  saved.renorm_r = std::move(f.r);
  saved.renorm_d = std::move(f.d);
  return {std::move(w_eff), b_eff.to(options_.dtype)};
}

Tensor BatchNorm::backward(const Tensor& grad_output) {
  check_replica_thread();
  const Saved& saved = saved_;
  detail::check_backward(saved.input.defined(), grad_output, saved.input.shape(), label_);
  detail::check_tensor(grad_output, label_, "grad_output", saved.input.device(), saved.input.dtype());
  const core::BatchNormForm how = form();
  const bool whole = saved.segments_per_group == 0;
  std::vector<core::ChannelGradSums> local;
  local.reserve(saved.segments.size());
  for (std::size_t k = 0; k < saved.segments.size(); ++k)
    local.push_back(whole ? core::batch_norm_grad_sums(grad_output, saved.input, saved.segments[k].coef, how,
                                                       saved.segments[k].relu_mask)
                          : core::batch_norm_grad_sums(row_of(grad_output, k), row_of(saved.input, k),
                                                       saved.segments[k].coef, how, saved.segments[k].relu_mask));
  // With batch statistics the mean and variance depend on every input of
  // the group, so the group's sums enter dx; with running statistics they
  // do not.
  std::vector<core::ChannelGradSums> exchanged;
  if (saved.batch_stats) exchanged = saved.exchange->sum(local, saved.segments_per_group, saved.home, saved.layout);
  const std::vector<core::ChannelGradSums>& total = saved.batch_stats ? exchanged : local;
  const Tensor weight = saved.renorm_weight.defined() ? saved.renorm_weight
                        : options_.affine             ? parameter(weight_).value
                                                      : Tensor();
  const std::optional<double> clamp_eps =
      options_.eps_mode == EpsMode::Clamp && options_.eps > 0 ? std::optional<double>(options_.eps) : std::nullopt;
  Tensor dx = whole ? Tensor() : Tensor::empty(saved.input.shape(), saved.input.dtype(), saved.input.device());
  for (std::size_t k = 0; k < saved.segments.size(); ++k) {
    const SavedSegment& segment = saved.segments[k];
    const Tensor coef_b = core::batch_norm_backward_coefficients(saved.batch_stats ? segment.count : 0, segment.invstd,
                                                                 weight, total[k], options_.dtype, clamp_eps);
    if (whole) {
      dx = core::batch_norm_backward_apply(grad_output, saved.input, segment.coef, coef_b, how, segment.relu_mask);
      continue;
    }
    row_of(dx, k).copy_(core::batch_norm_backward_apply(row_of(grad_output, k), row_of(saved.input, k), segment.coef,
                                                        coef_b, how, segment.relu_mask));
  }
  add_param_grads(saved, local, total);
  return dx;
}

void BatchNorm::add_param_grads(const Saved& saved, const std::vector<core::ChannelGradSums>& local,
                                const std::vector<core::ChannelGradSums>& total) {
  // Frozen affine parameters are constants: no gradient (MegEngine detaches them).
  if (!options_.affine || options_.freeze) return;
  const Parameter& w = parameter(weight_);
  const Parameter& b = parameter(bias_);
  // Each part's sums about its group's exact mean (the group's total and
  // count; count 0 for constant statistics).
  auto param_grads = [&](const Tensor& gw, const Tensor& gb, std::size_t k, const core::ChannelGradSums& part) {
    const SavedSegment& segment = saved.segments[k];
    core::batch_norm_param_grads(gw, gb, segment.invstd, part, total[k], saved.batch_stats ? segment.count : 0);
  };
  if (saved.segments_per_group > 0) {
    // Ghost batches: each row's share with its group's invstd.
    for (std::size_t k = 0; k < saved.segments.size(); ++k) param_grads(w.grad, b.grad, k, local[k]);
    return;
  }
  const comm::ParamShare share = saved.batch_stats ? saved.exchange->param_share() : comm::ParamShare::Local;
  if (share == comm::ParamShare::None) return;
  const core::ChannelGradSums& sums = share == comm::ParamShare::Whole ? total.front() : local.front();
  if (!saved.renorm_r.defined()) {
    param_grads(w.grad, b.grad, 0, sums);
    return;
  }
  // d/dw of w (x_hat r + d) + b: r sum(dy x_hat) + d sum(dy) (r, d constants),
  // in float64 and rounded once.
  const Shape c{features_};
  const Tensor g_xhat = Tensor::zeros(c, DType::Float64, w.grad.device());
  const Tensor g_bias = Tensor::zeros(c, DType::Float64, w.grad.device());
  param_grads(g_xhat, g_bias, 0, sums);
  core::add_(w.grad, core::add(core::mul(saved.renorm_r, g_xhat), core::mul(saved.renorm_d, g_bias)).to(options_.dtype));
  core::add_(b.grad, g_bias.to(options_.dtype));
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
