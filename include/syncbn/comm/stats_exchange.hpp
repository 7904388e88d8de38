#pragma once
// StatsExchange: how a batch-norm layer's per-channel statistics meet the
// rest of the batch (Note [One exchange] in src/comm/stats_exchange.cpp).

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/sync/sync_master.hpp"

namespace syncbn::comm {

/// The batch statistics of one normalisation group: its count of values
/// per channel, mean, inverse standard deviation and the unbiased variance
/// that the running statistics take (float64 tensors of shape (C)).
struct GroupStats {
  std::int64_t count = 0;
  Tensor mean;
  Tensor invstd;
  Tensor unbiased_var;
};

/// Which group a finalize call is for: its index in the batch and the
/// number of segments per group (0: the whole batch is one group).
struct GroupPlace {
  std::int64_t index = 0;
  std::int64_t segments_per_group = 0;
};

/// From a group's merged moments to its statistics (the count check, invstd
/// and the unbiased variance): the layer's rule, run once per group where
/// the groups are merged (copy 0's thread for replicas). What it throws
/// fails the exchange on every participant.
using Finalize = std::function<GroupStats(const core::ChannelMoments& merged, GroupPlace place)>;

/// How many segments each process had in a forward exchange across
/// processes with groups of segments (empty otherwise): the backward
/// exchange of the same pass needs it to place the processes' sums.
struct JobLayout {
  std::vector<std::int64_t> rank_segments;
};

/// What a forward exchange gives one participant.
struct MergedStats {
  /// For each of the participant's segments, in order: its group's count,
  /// mean and invstd on the segment's device (unbiased_var is left out).
  std::vector<GroupStats> per_segment;
  /// The batch's first group, whole, on the participant that updates the
  /// running statistics from this exchange (every participant of a local
  /// or process-only exchange, copy 0 of replicas); empty on the others.
  std::optional<GroupStats> first_group;
  /// For the backward exchange of the same pass.
  JobLayout layout;
};

/// Whose sums a participant's weight and bias gradients take after the
/// backward exchange (Note [Parameter gradients from the exchanged sums]).
enum class ParamShare : unsigned char {
  Local,  ///< its own segments' sums (no synchronisation)
  Whole,  ///< the whole batch's: the one participant that takes them
  None,   ///< nothing: another participant takes the whole batch's
};

class ReplicaRendezvous;

/// The statistics exchange of one participant (one batch-norm layer copy)
/// of a batch normalised in groups.
///
/// A participant hands in its *segments*: runs of its rows, each with
/// per-channel moments (forward) or gradient sums (backward). The batch's
/// segments are this participant's in the order of the participants:
/// replicas in replica order within a process, processes in rank order.
/// With `segments_per_group` 0 all of them form one group (batch norm, and
/// synchronized batch norm across replicas and processes); with V > 0 each
/// V consecutive segments form a group (ghost batch norm, one row per
/// segment, groups that may span replicas and processes). Forward merges
/// each group's moments (Chan's update, in batch order) and finalizes it;
/// backward sums each group's gradient sums; every participant gets, for
/// each of its segments, the result of its group.
///
/// Levels, composed by configuration: local (this participant alone), the
/// replicas of a process (join_replicas / lead_replicas: copy 0 merges, the
/// others wait for its reply) and processes (Options::processes: the
/// merging participant of each process exchanges with the group's other
/// processes, with the same scalar code in rank order on every rank).
///
/// Tensors may be non-owning views (Tensor::from_blob) of the caller's
/// memory on any device: the exchange reads them and allocates its results.
class StatsExchange {
 public:
  struct Options {
    /// How errors and collectives name the exchange, e.g. the layer's label.
    std::string name = "StatsExchange";
    /// How long a participant waits for the others in one exchange.
    std::chrono::milliseconds timeout = sync::kDefaultSyncTimeout;
    /// The number of channels of every segment (> 0).
    std::int64_t channels = 0;
    /// The processes exchanged with beyond this one; null: this process only.
    std::shared_ptr<ProcessGroup> processes = nullptr;
  };

  explicit StatsExchange(Options options);
  ~StatsExchange();
  StatsExchange(const StatsExchange&) = delete;
  StatsExchange& operator=(const StatsExchange&) = delete;

  /// Copy 0 of a replicated layer: this exchange merges for `copies`
  /// replicas (copies 1 .. copies - 1 join the returned rendezvous).
  /// `whereabouts` as in sync::SyncOptions.
  std::shared_ptr<ReplicaRendezvous> lead_replicas(std::shared_ptr<sync::Whereabouts> whereabouts = nullptr);
  /// Copy `copy_id` >= 1: this exchange sends to copy 0's rendezvous.
  void join_replicas(const std::shared_ptr<ReplicaRendezvous>& rendezvous, int copy_id);

  /// Forward: the group statistics of each of `segments` (see the class
  /// comment). `home` is where copy 0 merges (its state's device).
  MergedStats merge(std::vector<core::ChannelMoments> segments, std::int64_t segments_per_group, Device home,
                    const Finalize& finalize);
  /// Backward: each segment's group's sums of (sum(dy), sum(dy * (x -
  /// mean)), sum(x - mean)), on the segment's device (an undefined
  /// sum_xmu counts as zeros); `home` and `layout` are the forward's.
  std::vector<core::ChannelGradSums> sum(std::vector<core::ChannelGradSums> segments,
                                         std::int64_t segments_per_group, Device home, const JobLayout& layout);

  /// Whether merge and sum reach beyond this participant.
  bool synchronizes() const noexcept;
  /// Whose sums this participant's parameter gradients take after sum():
  /// Local without synchronisation, else Whole on copy 0 (or the layer
  /// itself when not replicated) of rank 0, None on the others.
  ParamShare param_share() const noexcept;
  const Options& options() const noexcept { return options_; }

 private:
  struct Round;
  struct Replicas;
  // This process's part: the segments of every replica (or of this
  // participant alone), merged, or summed, with the other processes'.
  MergedStats merge_process(std::vector<core::ChannelMoments> segments, const Round& round) const;
  std::vector<core::ChannelGradSums> sum_process(std::vector<core::ChannelGradSums> segments,
                                                 const Round& round) const;
  core::ChannelMoments merge_across_processes(const core::ChannelMoments& process) const;
  core::ChannelGradSums sum_across_processes(const core::ChannelGradSums& process) const;
  template <class Row>
  std::vector<Row> gather_rows(const std::vector<Row>& process, const std::vector<std::int64_t>& rank_rows,
                               const std::string& call, Device device) const;
  std::vector<std::int64_t> gather_row_counts(std::int64_t rows) const;
  bool across_processes() const noexcept { return options_.processes != nullptr && options_.processes->size() > 1; }
  template <class Row>
  void check_segments(const std::vector<Row>& segments, std::int64_t segments_per_group, const char* call) const;

  Options options_;
  int copy_id_ = -1;  // -1: not replicated
  std::unique_ptr<Replicas> replicas_;
};

/// The rendezvous of one replicated layer's exchanges (one SyncMaster pair,
/// forward and backward). The runtime releases it when a replica fails.
class ReplicaRendezvous {
 public:
  ~ReplicaRendezvous();
  ReplicaRendezvous(const ReplicaRendezvous&) = delete;
  ReplicaRendezvous& operator=(const ReplicaRendezvous&) = delete;

  /// Fails the current rounds on behalf of replica `failed`; never throws.
  void abort_for(int failed, const std::string& reason) noexcept;
  /// Makes the rendezvous usable again once every replica is idle.
  void reset();

 private:
  friend class StatsExchange;
  struct Masters;
  explicit ReplicaRendezvous(std::unique_ptr<Masters> masters);
  std::unique_ptr<Masters> masters_;
};

}  // namespace syncbn::comm
