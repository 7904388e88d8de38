#pragma once
// Batch normalization with PyTorch's options, defaults and running-statistics
// rules, per replica (BatchNorm1d/2d/3d). SyncBatchNorm*d derive from the
// same implementation and override how statistics are gathered.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "syncbn/comm/stats_exchange.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/nn/module.hpp"

namespace syncbn::nn {

/// How eps enters the inverse standard deviation.
enum class EpsMode : std::uint8_t {
  Plus,   ///< 1 / sqrt(var + eps) (PyTorch; default)
  Clamp,  ///< 1 / sqrt(max(var, eps)) (the original SynchronizedBatchNorm)
};

/// Options of the batch-norm layers (PyTorch's defaults).
/// When a training batch's statistics reach the running statistics
/// (tensorpack's ema_update).
enum class EmaUpdate : unsigned char {
  /// In the forward that computed them: PyTorch's behaviour, the default.
  Internal,
  /// Never: the running statistics and num_batches_tracked stay as they are
  /// (e.g. a layer applied several times per step, whose later calls should
  /// not count).
  Skip,
  /// Kept until apply_running_updates(), then applied in order as Internal
  /// would have (tensorpack's "collection": once per optimizer step).
  Deferred,
};

/// Batch Renormalization's limits (Ioffe 2017; tensorpack's BatchRenorm):
/// in training, r = clip(sigma_B / sigma, 1 / rmax, rmax) and d =
/// clip((mu_B - mu) / sigma, -dmax, dmax) with the running mean mu and
/// sigma = sqrt(running_var + eps) before this batch's update.
struct RenormLimits {
  double rmax = 1.0;  // >= 1; 1 with dmax 0 is plain batch norm
  double dmax = 0.0;  // >= 0
};

/// The channels' layout and the fused activations of the batch-norm stages
/// (syncbn/core/batch_norm_form.hpp), as layer options.
using core::Activation;
using core::ChannelLayout;

struct BatchNormOptions {
  double eps = 1e-5;
  /// Running-statistics factor; std::nullopt means a cumulative moving average
  /// (factor 1 / num_batches_tracked).
  std::optional<double> momentum = 0.1;
  /// Learnable weight (ones) and bias (zeros).
  bool affine = true;
  /// Keep running_mean (zeros), running_var (ones) and num_batches_tracked;
  /// when false, batch statistics are used in eval mode too.
  bool track_running_stats = true;
  EpsMode eps_mode = EpsMode::Plus;
  /// MegEngine's freeze: requires track_running_stats. In training too, the
  /// layer normalises with the running statistics, updates none of them
  /// (nor num_batches_tracked), and gives the affine parameters no gradient:
  /// grad_input is that of the frozen affine map. A SyncBatchNorm never
  /// communicates while frozen.
  bool freeze = false;
  /// When training batches update the running statistics (EmaUpdate).
  EmaUpdate ema_update = EmaUpdate::Internal;
  /// Ghost batch norm (tensorpack's virtual_batch_size): > 0 splits a
  /// training batch into consecutive groups of this many samples, each
  /// normalised by its own statistics; under SyncBatchNorm the groups are
  /// formed over the whole batch in replica order, so a group may span
  /// replicas (one exchange per layer and pass). The running statistics take
  /// the first group's, as tensorpack's (it mimics per-device batch norm
  /// of a device holding that group). The batch must be a multiple of it.
  /// 0: off. Not with freeze or renorm.
  std::int64_t virtual_batch_size = 0;
  /// Batch Renormalization: in training y = weight * (x_hat * r + d) + bias
  /// with x_hat normalised by the batch's statistics (the whole batch's
  /// under SyncBatchNorm, so r and d are synchronized too) and r, d treated
  /// as constants in backward. Needs track_running_stats; not with freeze.
  /// Eval is plain batch norm with the running statistics.
  std::optional<RenormLimits> renorm = std::nullopt;
  /// Where the input's channels are: First, (N, C, *) as PyTorch's default,
  /// or Last, channels-last (N, *, C): NHWC for 2d, NDHWC for 3d, (N, L, C)
  /// for 1d. The output and the input gradient have the input's layout;
  /// grad_output has the output's. Kernels are written for each layout.
  ChannelLayout layout = ChannelLayout::First;
  /// An activation fused into the layer (inplace_abn's set): the output is
  /// act(batch_norm(x)) and backward goes through it, in the same kernels:
  /// Activation::identity() (default), relu(), leaky_relu(slope >= 0),
  /// elu(alpha > 0).
  Activation activation = {};
  /// inplace_abn's in-place mode: forward writes its output over the input
  /// tensor (which must not be needed elsewhere, e.g. by a skip connection)
  /// and keeps only it; backward recovers x from y. Needs an invertible
  /// activation (identity, leaky_relu with a slope > 0, elu) and a non-zero
  /// weight in every channel (checked by each forward).
  bool inplace = false;
  /// dtype of parameters and running statistics: float64 for float64
  /// inputs, float32 for float32, float16 and bfloat16 inputs.
  DType dtype = DType::Float32;
  Device device = Device();
};

/// The batch-norm implementation shared by BatchNorm*d and SyncBatchNorm*d.
///
/// Training (or track_running_stats = false): normalises with the batch's
/// biased variance; in training with tracking, updates running_mean and the
/// unbiased running_var once per forward and counts num_batches_tracked.
/// Eval with tracking, or freeze: normalises with the running statistics.
/// Input (N, C, *): C must equal num_features; the rank depends on the layer.
/// An empty batch gives an empty output and changes no state; a batch with
/// one value per channel in training is an InvalidArgument.
class BatchNorm : public Module {
 public:
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

  std::int64_t num_features() const noexcept { return features_; }
  const BatchNormOptions& options() const noexcept { return options_; }
  /// "BatchNorm2d", "SyncBatchNorm2d", ...
  const std::string& kind() const noexcept { return kind_; }
  /// 1, 2 or 3.
  int spatial_dims() const noexcept { return dims_; }
  /// How the element-wise stages see this layer's tensors (layout,
  /// activation; from_output in the in-place mode).
  core::BatchNormForm form() const noexcept;

  /// Throw InvalidArgument when the layer is not affine.
  Parameter& weight();
  Parameter& bias();
  /// Throw InvalidArgument when the layer does not track running statistics.
  Tensor& running_mean();
  Tensor& running_var();
  /// An int64 scalar tensor.
  Tensor& num_batches_tracked();

  /// With EmaUpdate::Deferred: applies the training batches' statistics kept
  /// since the last call, in order, to the running statistics (as Internal
  /// would have in each forward), forgets them and returns how many. The
  /// replicas of a module keep them with the module (copy 0's batches, as
  /// Internal updates from copy 0), so call it on the model the user holds.
  /// Returns 0 for the other modes.
  std::int64_t apply_running_updates();
  /// How many batches' statistics apply_running_updates() would apply.
  std::int64_t pending_running_updates() const noexcept;

  /// Micro-batch accumulation: from now on the running statistics take one
  /// update per `micro_batches` training batches, from the statistics of
  /// their union merged exactly (count, mean and M2, as one batch of all of
  /// them would give), while each batch is still normalised by its own
  /// (synchronized) statistics; num_batches_tracked counts the updates. 1
  /// (the default) updates from every batch. Applies with every EmaUpdate
  /// but Skip (Deferred keeps the merged update). Shared with the replicas
  /// made from the layer (copy 0's batches count, as for Internal). Setting
  /// it drops a partial accumulation. Throws InvalidArgument for
  /// micro_batches < 1.
  void accumulate_statistics(std::int64_t micro_batches);
  /// The batches per update, and how many of the current group have been seen.
  std::int64_t accumulation() const noexcept;
  std::int64_t accumulated() const noexcept;

  /// Sets Batch Renormalization's limits from now on (e.g. a warm-up that
  /// opens rmax and dmax over the first steps), for this layer and the
  /// replicas made from it. Throws InvalidArgument for a layer without
  /// renorm or for rmax < 1 or dmax < 0, changing nothing.
  void set_renorm_limits(RenormLimits limits);
  /// The current limits; nullopt without renorm.
  std::optional<RenormLimits> renorm_limits() const;

 protected:
  BatchNorm(std::string kind, int spatial_dims, std::int64_t num_features, BatchNormOptions options);
  BatchNorm(const BatchNorm&) = default;

  /// The exchange a training forward merges its statistics through (Note
  /// [One exchange] in src/comm/stats_exchange.cpp): this layer's own by
  /// default; SyncBatchNorm installs one that reaches its replicas and
  /// processes. Eval with batch statistics always uses the layer's own.
  void set_exchange(std::shared_ptr<comm::StatsExchange> exchange);
  /// A new exchange named by the layer's label, over `processes` (null:
  /// this process only).
  std::shared_ptr<comm::StatsExchange> make_exchange(std::shared_ptr<comm::ProcessGroup> processes,
                                                     std::chrono::milliseconds timeout) const;

  /// For the conversions: takes over `source`'s state as PyTorch's
  /// conversion does, nothing copied or reset: its very Parameter objects
  /// (so that an optimizer holding them keeps working), its buffers and its
  /// training mode (same options and number of features).
  void take_state_of(BatchNorm& source);
  friend std::shared_ptr<Module> convert_sync_batchnorm(std::shared_ptr<Module> module,
                                                        std::chrono::milliseconds sync_timeout,
                                                        std::shared_ptr<comm::ProcessGroup> process_group);
  friend std::shared_ptr<Module> revert_sync_batchnorm(std::shared_ptr<Module> module);

  /// How the layer's errors and exchanges name it from now on, e.g.
  /// "SyncBatchNorm2d 'block1.bn'" once replicated (the kind until then).
  /// Gives the layer a new exchange of its own under that name.
  void set_label(std::string label);
  /// The label errors and exchanges name the layer by.
  const std::string& label() const noexcept { return label_; }

  /// The device of this layer's parameters and buffers.
  std::optional<Device> state_device() const;

  void clear_cache() override;

 private:
  using GroupStats = comm::GroupStats;

  // What a segment of the batch (all of it, or one row of a ghost batch)
  // keeps for backward.
  struct SavedSegment {
    Tensor coef;
    Tensor invstd;
    std::int64_t count = 0;
    Tensor relu_mask;  // core::batch_norm_relu_mask's, where the stages keep one
  };
  // What forward keeps for backward. A forward builds a new one and installs
  // it only once it has succeeded, so that a refused forward leaves the
  // previous one (and its backward) intact.
  struct Saved {
    Tensor input;  // the input, or the output in place of it (inplace)
    std::vector<SavedSegment> segments;
    std::int64_t segments_per_group = 0;  // ghost batch norm's V; 0: one segment
    bool batch_stats = false;
    // The exchange the forward merged through, and what its backward needs.
    std::shared_ptr<comm::StatsExchange> exchange;
    comm::JobLayout layout;
    Device home;
    // Renorm: the batch's r and d per channel (float64), and weight * r,
    // which backward's coefficients use.
    Tensor renorm_r, renorm_d;
    Tensor renorm_weight;
  };

  // What statistics cover, for finalize_statistics's error only (formatted
  // when it is thrown): the whole batch (the default), one replica's shard
  // (replica >= 0), or ghost batch `ghost_group` of `ghost_rows` rows.
  struct StatsCover {
    int replica = -1;
    std::int64_t ghost_group = -1;
    std::int64_t ghost_rows = 0;
    std::string describe() const;
  };
  // From merged statistics: rejects a count of 1 in training and computes
  // invstd and the unbiased variance; changes no state.
  GroupStats finalize_statistics(const core::ChannelMoments& merged, StatsCover cover) const;
  // In training with tracking, updates the running statistics of this
  // module once from `batch` (an empty batch counts).
  void track_running(const GroupStats& batch);

  void check_input(const Tensor& input) const;
  void check_inplace_weight() const;

  // The statistics of each segment of a training (or eval without running
  // statistics) batch, through the exchange; sets next's exchange fields.
  std::vector<GroupStats> exchange_statistics(const Tensor& input, Saved& next);
  // Renorm's correction of the batch's statistics (Note [Batch
  // renormalization]): sets saved.renorm_* and returns the effective weight and bias.
  std::pair<Tensor, Tensor> renorm_affine(const GroupStats& norm, const Tensor& running_mean,
                                          const Tensor& running_var, const Tensor& weight, const Tensor& bias,
                                          Saved& saved) const;
  // Adds the parameter gradients of a backward from its segments' sums.
  void add_param_grads(const Saved& saved, const std::vector<core::ChannelGradSums>& local,
                       const std::vector<core::ChannelGradSums>& total);
  // Records how to undo a change track_running is about to make (Note
  // [All-or-nothing forward]).
  enum class RunningState : unsigned char { Buffers, Pending, Accumulator };
  void record_undo(RunningState what);

  // One update of the running statistics from a batch's statistics.
  void update_running(const GroupStats& batch);
  // Merges a batch into the micro-batch accumulation; the union's
  // statistics once the group is complete.
  std::optional<GroupStats> accumulate(const GroupStats& batch);

  std::string kind_;
  std::string label_;  // how errors name the layer: its kind, or kind and path once replicated
  int dims_;
  std::int64_t features_;
  BatchNormOptions options_;
  std::size_t weight_ = 0, bias_ = 0;
  std::size_t running_mean_ = 0, running_var_ = 0, batches_ = 0;
  // EmaUpdate::Deferred's kept statistics, shared with the copies that
  // replicate() makes (so that copy 0's reach the user's module).
  std::shared_ptr<std::vector<GroupStats>> pending_ = std::make_shared<std::vector<GroupStats>>();
  // Micro-batch accumulation (Note [Micro-batch accumulation]), shared with
  // the copies like pending_.
  struct Accumulator {
    std::int64_t every = 1;
    std::int64_t seen = 0;
    core::HostMoments moments;  // the union of the group's batches so far
  };
  std::shared_ptr<Accumulator> accumulator_ = std::make_shared<Accumulator>();
  // Batch Renormalization's limits, shared with the replicas (so that a
  // schedule set on the module reaches them); null without renorm.
  std::shared_ptr<RenormLimits> renorm_;
  // This layer's own exchange, and the one training forwards use (the same
  // unless a SyncBatchNorm installed another).
  std::shared_ptr<comm::StatsExchange> own_exchange_, exchange_;
  Saved saved_;
};

/// Batch norm over (N, C) or (N, C, L) input ((N, C) or (N, L, C) channels-last).
class BatchNorm1d : public Cloneable<BatchNorm1d, BatchNorm> {
 public:
  explicit BatchNorm1d(std::int64_t num_features, BatchNormOptions options = {})
      : Cloneable("BatchNorm1d", 1, num_features, options) {}
};

/// Batch norm over (N, C, H, W) input ((N, H, W, C) channels-last).
class BatchNorm2d : public Cloneable<BatchNorm2d, BatchNorm> {
 public:
  explicit BatchNorm2d(std::int64_t num_features, BatchNormOptions options = {})
      : Cloneable("BatchNorm2d", 2, num_features, options) {}
};

/// Batch norm over (N, C, D, H, W) input ((N, D, H, W, C) channels-last).
class BatchNorm3d : public Cloneable<BatchNorm3d, BatchNorm> {
 public:
  explicit BatchNorm3d(std::int64_t num_features, BatchNormOptions options = {})
      : Cloneable("BatchNorm3d", 3, num_features, options) {}
};

/// BatchNorm::accumulate_statistics(micro_batches) on every batch-norm
/// layer in `module`'s tree; returns how many layers it set.
std::int64_t accumulate_statistics(Module& module, std::int64_t micro_batches);

/// BatchNorm::apply_running_updates() of every batch-norm layer in
/// `module`'s tree (EmaUpdate::Deferred), e.g. once after each optimizer
/// step; returns how many batch updates were applied in all.
std::int64_t apply_running_updates(Module& module);

}  // namespace syncbn::nn
