#pragma once
// Synchronized batch normalization: batch statistics over the whole batch
// split across replicas, exchanged through a SyncMaster / SlavePipe
// rendezvous wired by the replication callback.

#include <chrono>
#include <cstdint>
#include <memory>
#include <utility>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/nn/batch_norm.hpp"

namespace syncbn::nn {

/// The synchronized batch norm shared by SyncBatchNorm1d/2d/3d.
///
/// Options, defaults, input ranks and running-statistics rules are those of
/// the matching BatchNorm*d. In training, every replica computes its shard's
/// per-channel (count, mean, M2) and hands it to the layer's statistics
/// exchange (comm::StatsExchange, installed by the replication callback);
/// the master (copy 0) merges the partials in replica order, checks that
/// the batch has more than one value per channel, computes the mean and the
/// inverse standard deviation from the biased variance, updates the running
/// statistics (unbiased variance, count-weighted) once, and replies (count,
/// mean, invstd) to every replica, which normalises its shard. Backward
/// exchanges the per-channel sum(dy) and sum(dy * (x - mean)) the same way,
/// so grad_input equals full-batch batch norm's; copy 0 (of rank 0) takes
/// the whole batch's grad_weight and grad_bias from the exchanged float64
/// sums and the other copies none, so DataParallel's gradient reduction
/// gives the full-batch gradients. Ghost batch norm (virtual_batch_size)
/// goes through the same exchange, in groups that may span replicas.
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
/// Across processes (Note [Hierarchical exchange] in sync_batch_norm.cpp):
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

 protected:
  SyncBatchNorm(std::string kind, int spatial_dims, std::int64_t num_features, BatchNormOptions options,
                std::chrono::milliseconds sync_timeout, std::shared_ptr<comm::ProcessGroup> process_group);
  SyncBatchNorm(const SyncBatchNorm&) = default;

  void clear_cache() override;

 private:
  std::chrono::milliseconds timeout_;
  std::shared_ptr<comm::ProcessGroup> group_;
  int copy_id_ = -1;
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
