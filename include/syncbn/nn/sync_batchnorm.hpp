#pragma once
// Synchronized batch normalization: batch statistics over the whole batch
// split across replicas, exchanged through a SyncMaster / SlavePipe
// rendezvous wired by the replication callback.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/nn/batchnorm.hpp"
#include "syncbn/sync/sync_master.hpp"

namespace syncbn::nn {

/// The synchronized batch norm shared by SyncBatchNorm1d/2d/3d.
///
/// Options, defaults, input ranks and running-statistics rules are those of
/// the matching BatchNorm*d. In training, every replica computes its shard's
/// per-channel (count, mean, M2) and sends it through the layer's forward
/// rendezvous; the master (copy 0) merges the partials in replica order,
/// checks that the batch has more than one value per channel, computes the
/// mean and the inverse standard deviation from the biased variance, updates
/// the running statistics (unbiased variance, count-weighted) once, and
/// replies (count, mean, invstd) to every replica, which normalises its
/// shard. Backward exchanges the per-channel sum(dy) and sum(dy * (x - mean))
/// the same way, so grad_input equals full-batch batch norm's; grad_weight
/// and grad_bias are each replica's share, whose sum over replicas (done by
/// DataParallel's gradient reduction) equals the full-batch gradients.
///
/// Eval mode uses the running statistics and never communicates; with
/// track_running_stats = false, eval uses the shard's own batch statistics
/// (as PyTorch: synchronisation happens only in training). A layer that is
/// not replicated, or replicated once, behaves exactly as BatchNorm*d.
///
/// A replica that skips the layer leaves the others waiting: they fail with
/// a Timeout naming the layer and the missing replica after `sync_timeout`,
/// or at once with a CommError when the runtime aborts the step.
///
/// Across processes (Note [Hierarchical exchange] in sync_batchnorm.cpp):
/// with a `process_group`, the master replica of each process exchanges the
/// process's merged (count, mean, M2) with the group's other processes (one
/// all-gather per layer and pass, merged in rank order, so that every rank
/// computes bit-identical statistics and running statistics), and backward
/// the gradient sums (rank-order sums); a layer that is not replicated does
/// the same with its own batch. The count check (more than one value per
/// channel) is made on the whole batch. Eval never communicates. A process
/// that calls another layer, or one call too many, makes the exchange fail
/// on every rank with a CommError naming each rank's layer; one that never
/// arrives, a Timeout after `sync_timeout` (comm::ProcessGroup).
class SyncBatchNorm : public BatchNorm {
 public:
  void on_replicate(ReplicationContext& context, int copy_id) override;
  /// The copy id given by the replication callback; -1 when not replicated.
  int copy_id() const noexcept { return copy_id_; }
  /// How long a replica waits for the others in one exchange.
  std::chrono::milliseconds sync_timeout() const noexcept { return timeout_; }
  /// The processes this layer synchronizes with beyond its own (null: this
  /// process's replicas only).
  const std::shared_ptr<comm::ProcessGroup>& process_group() const noexcept { return group_; }

  /// BatchNorm::forward; a refused forward keeps the previous one's
  /// exchange state for its backward, as BatchNorm keeps its saved tensors.
  Tensor forward(const Tensor& input) override;

 protected:
  SyncBatchNorm(std::string kind, int spatial_dims, std::int64_t num_features, BatchNormOptions options,
                std::chrono::milliseconds sync_timeout, std::shared_ptr<comm::ProcessGroup> process_group);
  SyncBatchNorm(const SyncBatchNorm&) = default;

  NormStats batch_statistics(const ShardStats& shard) override;
  GradSums gradient_sums(const GradSums& local) override;
  ParamShare param_share() const override;
  std::vector<NormStats> ghost_statistics(const std::vector<ShardStats>& rows) override;
  std::vector<GradSums> ghost_gradient_sums(const std::vector<GradSums>& rows) override;
  void clear_cache() override;

 private:
  struct Link;
  // The master callbacks of the two rendezvous (they run on copy 0's thread).
  // Forward: merges the shards' statistics in replica order and replies to
  // each replica with the batch's statistics on its device (copy 0's reply
  // also holds the unbiased variance for its running statistics).
  std::vector<std::pair<int, Finalized>> merge_round(std::vector<std::pair<int, ShardStats>> parts) const;
  // Backward: sums the shards' gradient sums in replica order and replies
  // with the totals on each replica's device.
  std::vector<std::pair<int, GradSums>> sum_round(std::vector<std::pair<int, GradSums>> parts) const;
  // Ghost batch norm's rounds: every replica's rows in replica order, grouped
  // over the whole batch; each replica's reply holds its rows' statistics
  // (copy 0's also the first group's, for the running statistics), or
  // gradient sums.
  struct GhostReply {
    std::vector<NormStats> rows;
    std::optional<Finalized> first_group;
  };
  // Not const: across processes it records the ranks' row counts.
  std::vector<std::pair<int, GhostReply>> ghost_merge_round(
      std::vector<std::pair<int, std::vector<ShardStats>>> parts);
  std::vector<std::pair<int, std::vector<GradSums>>> ghost_sum_round(
      std::vector<std::pair<int, std::vector<GradSums>>> parts) const;
  // With a process group: this process's merged moments, or gradient sums,
  // combined with the other processes' (rank order); otherwise unchanged.
  ShardStats across_processes(const ShardStats& process) const;
  GradSums across_processes(const GradSums& process) const;
  // Ghost batches across processes (Note [Ghost batches across processes]):
  // this process's rows in their place among all of the job's, in rank order.
  struct JobRows {
    std::vector<ShardStats> rows;  // every rank's rows, in rank order
    std::size_t first = 0;         // where this process's rows start
  };
  JobRows rows_across_processes(const std::vector<ShardStats>& process, Device device);
  std::vector<GradSums> row_sums_across_processes(const std::vector<GradSums>& process) const;
  // Where this process's rows start among the job's, from the latest ghost
  // forward's counts.
  std::size_t job_first_row() const;
  // Each rank's row count in the latest ghost forward across processes.
  std::vector<std::int64_t> ghost_rank_rows_;

  std::chrono::milliseconds timeout_;
  std::shared_ptr<comm::ProcessGroup> group_;
  int copy_id_ = -1;
  std::shared_ptr<Link> link_;
  bool synced_forward_ = false;
};

/// Synchronized batch norm over (N, C) or (N, C, L) input.
class SyncBatchNorm1d : public Cloneable<SyncBatchNorm1d, SyncBatchNorm> {
 public:
  explicit SyncBatchNorm1d(std::int64_t num_features, BatchNormOptions options = {},
                           std::chrono::milliseconds sync_timeout = sync::kDefaultSyncTimeout,
                           std::shared_ptr<comm::ProcessGroup> process_group = nullptr)
      : Cloneable("SyncBatchNorm1d", 1, num_features, options, sync_timeout, std::move(process_group)) {}
};

/// Synchronized batch norm over (N, C, H, W) input.
class SyncBatchNorm2d : public Cloneable<SyncBatchNorm2d, SyncBatchNorm> {
 public:
  explicit SyncBatchNorm2d(std::int64_t num_features, BatchNormOptions options = {},
                           std::chrono::milliseconds sync_timeout = sync::kDefaultSyncTimeout,
                           std::shared_ptr<comm::ProcessGroup> process_group = nullptr)
      : Cloneable("SyncBatchNorm2d", 2, num_features, options, sync_timeout, std::move(process_group)) {}
};

/// Synchronized batch norm over (N, C, D, H, W) input.
class SyncBatchNorm3d : public Cloneable<SyncBatchNorm3d, SyncBatchNorm> {
 public:
  explicit SyncBatchNorm3d(std::int64_t num_features, BatchNormOptions options = {},
                           std::chrono::milliseconds sync_timeout = sync::kDefaultSyncTimeout,
                           std::shared_ptr<comm::ProcessGroup> process_group = nullptr)
      : Cloneable("SyncBatchNorm3d", 3, num_features, options, sync_timeout, std::move(process_group)) {}
};

/// Replaces every BatchNorm1d/2d/3d in `module`'s tree by the matching
/// SyncBatchNorm*d (with `sync_timeout` and `process_group`), which takes
/// over the same parameters (values and gradients), buffers (running
/// statistics and num_batches_tracked), options and training mode. Returns
/// the converted root: `module` itself, or a new layer when the root is a
/// BatchNorm. Throws InvalidArgument for a null module, a negative
/// sync_timeout and a subclass of a BatchNorm*d (its overrides would be
/// dropped), before changing anything: a refused conversion leaves the tree
/// as it was.
/// Create optimizers after converting: they hold pointers to the layers'
/// parameter entries, and a replaced layer's entries go away with it.
std::shared_ptr<Module> convert_sync_batchnorm(std::shared_ptr<Module> module,
                                               std::chrono::milliseconds sync_timeout = sync::kDefaultSyncTimeout,
                                               std::shared_ptr<comm::ProcessGroup> process_group = nullptr);

/// The inverse of convert_sync_batchnorm (for inference or export without
/// synchronisation): replaces every SyncBatchNorm1d/2d/3d in `module`'s tree
/// by the matching BatchNorm*d, which takes over the same parameter objects
/// (values and gradients), buffers, options and training mode. Returns the
/// converted root: `module` itself, or a new layer when the root is a
/// SyncBatchNorm. Throws InvalidArgument for a null module and for a
/// subclass of a SyncBatchNorm*d (its overrides would be dropped), before
/// changing anything.
std::shared_ptr<Module> revert_sync_batchnorm(std::shared_ptr<Module> module);

}  // namespace syncbn::nn
