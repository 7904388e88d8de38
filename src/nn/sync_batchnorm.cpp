// SyncBatchNorm: batch statistics and gradient sums exchanged through two
// SyncMaster rendezvous per layer (see docs/design.md, "Synchronized batch
// norm"). Numerics: docs/numerics.md.

#include "syncbn/nn/sync_batchnorm.hpp"

#include <cstring>
#include <optional>
#include <typeinfo>

#include "syncbn/comm/collectives.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/nn/replication_context.hpp"

namespace syncbn::nn {

// The messages are BatchNorm's own: a shard's (count, mean, M2) up; down,
// the batch's (count, mean, invstd), with the unbiased variance in copy 0's
// reply for its running-statistics update; gradient sums both ways.
struct SyncBatchNorm::Link {
  using ForwardMaster = sync::SyncMaster<ShardStats, Finalized>;
  using BackwardMaster = sync::SyncMaster<GradSums, GradSums>;
  // Ghost batch norm's rendezvous (Note [Ghost batch norm] in batchnorm.cpp).
  using GhostForwardMaster = sync::SyncMaster<std::vector<ShardStats>, GhostReply>;
  using GhostBackwardMaster = sync::SyncMaster<std::vector<GradSums>, std::vector<GradSums>>;
  // Copy 0's rendezvous, handed to the other copies through the replication context.
  struct Masters {
    std::shared_ptr<ForwardMaster> forward;
    std::shared_ptr<BackwardMaster> backward;
    std::shared_ptr<GhostForwardMaster> ghost_forward;
    std::shared_ptr<GhostBackwardMaster> ghost_backward;
  };

  std::shared_ptr<ForwardMaster> forward_master;
  std::shared_ptr<BackwardMaster> backward_master;
  std::shared_ptr<GhostForwardMaster> ghost_forward_master;
  std::shared_ptr<GhostBackwardMaster> ghost_backward_master;
  ForwardMaster::Pipe forward_pipe;
  BackwardMaster::Pipe backward_pipe;
  GhostForwardMaster::Pipe ghost_forward_pipe;
  GhostBackwardMaster::Pipe ghost_backward_pipe;
};

SyncBatchNorm::SyncBatchNorm(std::string kind, int spatial_dims, std::int64_t num_features, BatchNormOptions options,
                             std::chrono::milliseconds sync_timeout,
                             std::shared_ptr<comm::ProcessGroup> process_group)
    : BatchNorm(std::move(kind), spatial_dims, num_features, options),
      timeout_(sync_timeout),
      group_(std::move(process_group)) {
  SYNCBN_CHECK(sync_timeout.count() >= 0, this->kind(), ": sync_timeout is ", sync_timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
}

void SyncBatchNorm::clear_cache() {
  BatchNorm::clear_cache();
  set_label(kind());
  // A copy is not wired to anything until the replication callback runs on it.
  copy_id_ = -1;
  link_.reset();
  synced_forward_ = false;
}

Tensor SyncBatchNorm::forward(const Tensor& input) {
  const bool synced_before = synced_forward_;
  std::vector<std::int64_t> rank_rows_before = ghost_rank_rows_;
  try {
    return BatchNorm::forward(input);
  } catch (...) {
    synced_forward_ = synced_before;
    ghost_rank_rows_ = std::move(rank_rows_before);
    throw;
  }
}

std::vector<std::pair<int, BatchNorm::Finalized>> SyncBatchNorm::merge_round(
    std::vector<std::pair<int, ShardStats>> parts) const {
  std::vector<ShardStats> shards;
  std::vector<std::pair<int, Device>> devices;
  shards.reserve(parts.size());
  devices.reserve(parts.size());
  for (auto& [id, m] : parts) {
    devices.emplace_back(id, m.mean.device());
    shards.push_back(std::move(m));
  }
  // Merged on copy 0's device in replica order; finalize_statistics rejects
  // one value per channel and changes no state (the running statistics are
  // updated by copy 0 once the replies are out).
  Finalized batch =
      finalize_statistics(across_processes(core::merge_moments(shards, devices.front().second)), StatsCover{});
  std::vector<std::pair<int, Finalized>> replies;
  replies.reserve(devices.size());
  for (const auto& [id, device] : devices) {
    if (id == 0) continue;
    const NormStats& norm = batch.norm;
    replies.emplace_back(id, Finalized{NormStats{norm.count, norm.mean.onto(device), norm.invstd.onto(device)}, {}});
  }
  replies.emplace(replies.begin(), 0, std::move(batch));
  return replies;
}

std::vector<std::pair<int, BatchNorm::GradSums>> SyncBatchNorm::sum_round(
    std::vector<std::pair<int, GradSums>> parts) const {
  const Device home = parts.front().second.sum_dy.device();
  std::vector<std::vector<Tensor>> groups;
  std::vector<std::pair<int, Device>> devices;
  groups.reserve(parts.size());
  devices.reserve(parts.size());
  for (auto& [id, m] : parts) {
    devices.emplace_back(id, m.sum_dy.device());
    groups.push_back({std::move(m.sum_dy), std::move(m.sum_dy_xmu)});
  }
  // Copies and a float64 sum in replica order: deterministic.
  const auto local = comm::reduce_add_coalesced(groups, home, comm::Transport::Copy);
  const GradSums totals = across_processes(GradSums{local[0], local[1]});
  std::vector<std::pair<int, GradSums>> replies;
  replies.reserve(devices.size());
  for (const auto& [id, device] : devices)
    replies.emplace_back(id, GradSums{totals.sum_dy.onto(device), totals.sum_dy_xmu.onto(device)});
  return replies;
}

// Note [Hierarchical exchange]
// Replicas meet at their process's master through the SyncMaster as ever;
// only the masters talk across processes, one collective per layer and
// pass. Forward: each process all-gathers its merged (count, mean, M2) in
// float64 with an int64 count, and every rank merges the ranks' parts in
// rank order with the same scalar code (Chan's pairwise update, compiled
// once, not per CPU level), so that every rank computes the same bits
// whatever its CPU; parts with a count of 0 are skipped. The
// count check of finalize_statistics then sees the whole batch. Backward:
// a rank-order sum of the processes' gradient sums (ProcessGroup::
// all_reduce_sum). The exchange carries the layer's label as the call's
// name, so a process in another layer is named in the error.
BatchNorm::ShardStats SyncBatchNorm::across_processes(const ShardStats& process) const {
  if (group_ == nullptr || group_->size() == 1) return process;
  const Device device = process.mean.device();
  const std::vector<double> mean = process.mean.to_vector<double>(), m2 = process.m2.to_vector<double>();
  const std::size_t c = mean.size();
  std::vector<std::byte> payload(sizeof(std::int64_t) + 2 * c * sizeof(double));
  std::memcpy(payload.data(), &process.count, sizeof(std::int64_t));
  std::memcpy(payload.data() + sizeof(std::int64_t), mean.data(), c * sizeof(double));
  std::memcpy(payload.data() + sizeof(std::int64_t) + c * sizeof(double), m2.data(), c * sizeof(double));
  const std::vector<std::byte> all = group_->all_gather(payload, label() + " forward", timeout_);

  core::HostMoments merged;
  merged.mean.assign(c, 0.0);
  merged.m2.assign(c, 0.0);
  std::vector<double> part_mean(c), part_m2(c);
  for (int r = 0; r < group_->size(); ++r) {
    const std::byte* part = all.data() + static_cast<std::size_t>(r) * payload.size();
    std::int64_t n = 0;
    std::memcpy(&n, part, sizeof(n));
    std::memcpy(part_mean.data(), part + sizeof(std::int64_t), c * sizeof(double));
    std::memcpy(part_m2.data(), part + sizeof(std::int64_t) + c * sizeof(double), c * sizeof(double));
    merged.merge(n, part_mean, part_m2);
  }
  const Shape shape{static_cast<std::int64_t>(c)};
  return ShardStats{merged.count, Tensor::from_vector(merged.mean, shape).onto(device),
                    Tensor::from_vector(merged.m2, shape).onto(device)};
}

BatchNorm::GradSums SyncBatchNorm::across_processes(const GradSums& process) const {
  if (group_ == nullptr || group_->size() == 1) return process;
  const Device device = process.sum_dy.device();
  std::vector<double> sums = process.sum_dy.to_vector<double>();
  const std::size_t c = sums.size();
  const std::vector<double> xmu = process.sum_dy_xmu.to_vector<double>();
  sums.insert(sums.end(), xmu.begin(), xmu.end());
  const std::vector<double> totals = group_->all_reduce_sum(sums, label() + " backward", timeout_);
  const Shape shape{static_cast<std::int64_t>(c)};
  return GradSums{Tensor::from_vector(std::vector<double>(totals.begin(), totals.begin() + static_cast<std::ptrdiff_t>(c)), shape).onto(device),
                  Tensor::from_vector(std::vector<double>(totals.begin() + static_cast<std::ptrdiff_t>(c), totals.end()), shape).onto(device)};
}

// Note [Ghost batches across processes]
// With a process group, ghost batches are formed over the job's whole batch:
// every process's rows in rank order (each process's in replica order), so a
// group may span processes as it spans replicas. The masters exchange their
// row counts, then their per-row moments (count, mean, M2 in float64) padded
// to the longest, and every rank forms the same groups from the same rows
// with the same code (so the same bits, and the same error for a batch that
// the virtual batch size does not divide); backward exchanges the per-row
// gradient sums the same way, with the counts of the forward. Two
// collectives per pass rather than one: the counts decide the sizes.
SyncBatchNorm::JobRows SyncBatchNorm::rows_across_processes(const std::vector<ShardStats>& process, Device device) {
  if (group_ == nullptr || group_->size() == 1) return JobRows{process, 0};
  const auto local_rows = static_cast<std::int64_t>(process.size());
  std::vector<std::byte> count_bytes(sizeof(std::int64_t));
  std::memcpy(count_bytes.data(), &local_rows, sizeof local_rows);
  const std::vector<std::byte> counts = group_->all_gather(count_bytes, label() + " forward rows", timeout_);
  ghost_rank_rows_.assign(static_cast<std::size_t>(group_->size()), 0);
  std::int64_t most = 0;
  for (std::size_t r = 0; r < ghost_rank_rows_.size(); ++r) {
    std::memcpy(&ghost_rank_rows_[r], counts.data() + r * sizeof(std::int64_t), sizeof(std::int64_t));
    most = std::max(most, ghost_rank_rows_[r]);
  }
  const auto c = static_cast<std::size_t>(num_features());
  const std::size_t row_bytes = sizeof(std::int64_t) + 2 * c * sizeof(double);
  std::vector<std::byte> payload(static_cast<std::size_t>(most) * row_bytes);
  for (std::size_t i = 0; i < process.size(); ++i) {
    std::byte* at = payload.data() + i * row_bytes;
    const std::vector<double> mean = process[i].mean.to_vector<double>(), m2 = process[i].m2.to_vector<double>();
    std::memcpy(at, &process[i].count, sizeof(std::int64_t));
    std::memcpy(at + sizeof(std::int64_t), mean.data(), c * sizeof(double));
    std::memcpy(at + sizeof(std::int64_t) + c * sizeof(double), m2.data(), c * sizeof(double));
  }
  const std::vector<std::byte> all = group_->all_gather(payload, label() + " forward", timeout_);
  JobRows job;
  const Shape shape{num_features()};
  std::vector<double> mean(c), m2(c);
  for (std::size_t r = 0; r < ghost_rank_rows_.size(); ++r) {
    if (static_cast<int>(r) == group_->rank()) job.first = job.rows.size();
    for (std::int64_t i = 0; i < ghost_rank_rows_[r]; ++i) {
      const std::byte* at = all.data() + r * payload.size() + static_cast<std::size_t>(i) * row_bytes;
      ShardStats row;
      std::memcpy(&row.count, at, sizeof(std::int64_t));
      std::memcpy(mean.data(), at + sizeof(std::int64_t), c * sizeof(double));
      std::memcpy(m2.data(), at + sizeof(std::int64_t) + c * sizeof(double), c * sizeof(double));
      row.mean = Tensor::from_vector(mean, shape).onto(device);
      row.m2 = Tensor::from_vector(m2, shape).onto(device);
      job.rows.push_back(std::move(row));
    }
  }
  return job;
}

std::vector<BatchNorm::GradSums> SyncBatchNorm::row_sums_across_processes(const std::vector<GradSums>& process) const {
  if (group_ == nullptr || group_->size() == 1) return process;
  std::int64_t most = 0;
  for (const std::int64_t rows : ghost_rank_rows_) most = std::max(most, rows);
  const auto c = static_cast<std::size_t>(num_features());
  const std::size_t row_bytes = 2 * c * sizeof(double);
  std::vector<std::byte> payload(static_cast<std::size_t>(most) * row_bytes);
  for (std::size_t i = 0; i < process.size(); ++i) {
    const std::vector<double> s = process[i].sum_dy.to_vector<double>(), sx = process[i].sum_dy_xmu.to_vector<double>();
    std::memcpy(payload.data() + i * row_bytes, s.data(), c * sizeof(double));
    std::memcpy(payload.data() + i * row_bytes + c * sizeof(double), sx.data(), c * sizeof(double));
  }
  const std::vector<std::byte> all = group_->all_gather(payload, label() + " backward", timeout_);
  const Device device = process.empty() ? options().device : process.front().sum_dy.device();
  const Shape shape{num_features()};
  std::vector<GradSums> rows;
  std::vector<double> s(c), sx(c);
  for (std::size_t r = 0; r < ghost_rank_rows_.size(); ++r)
    for (std::int64_t i = 0; i < ghost_rank_rows_[r]; ++i) {
      const std::byte* at = all.data() + r * payload.size() + static_cast<std::size_t>(i) * row_bytes;
      std::memcpy(s.data(), at, c * sizeof(double));
      std::memcpy(sx.data(), at + c * sizeof(double), c * sizeof(double));
      rows.push_back(GradSums{Tensor::from_vector(s, shape).onto(device), Tensor::from_vector(sx, shape).onto(device)});
    }
  return rows;
}

void SyncBatchNorm::on_replicate(ReplicationContext& context, int copy_id) {
  copy_id_ = copy_id;
  synced_forward_ = false;
  link_ = std::make_shared<Link>();
  const std::string name = kind() + (context.name().empty() ? std::string() : " '" + context.name() + "'");
  set_label(name);  // a bad shard's error names the layer's path
  if (copy_id == 0) {
    // The callbacks run on copy 0's thread and use copy 0 (`this`), which owns
    // the masters through link_: they never outlive it.
    link_->forward_master = std::make_shared<Link::ForwardMaster>(
        [this](std::vector<std::pair<int, ShardStats>> parts) { return merge_round(std::move(parts)); },
        sync::SyncOptions{name + " forward", timeout_, {}, context.whereabouts()});
    link_->backward_master = std::make_shared<Link::BackwardMaster>(
        [this](std::vector<std::pair<int, GradSums>> parts) { return sum_round(std::move(parts)); },
        sync::SyncOptions{name + " backward", timeout_, {}, context.whereabouts()});
    link_->ghost_forward_master = std::make_shared<Link::GhostForwardMaster>(
        [this](std::vector<std::pair<int, std::vector<ShardStats>>> parts) { return ghost_merge_round(std::move(parts)); },
        sync::SyncOptions{name + " forward", timeout_, {}, context.whereabouts()});
    link_->ghost_backward_master = std::make_shared<Link::GhostBackwardMaster>(
        [this](std::vector<std::pair<int, std::vector<GradSums>>> parts) { return ghost_sum_round(std::move(parts)); },
        sync::SyncOptions{name + " backward", timeout_, {}, context.whereabouts()});
    context.set(std::make_shared<Link::Masters>(Link::Masters{link_->forward_master, link_->backward_master,
                                                              link_->ghost_forward_master,
                                                              link_->ghost_backward_master}));
    std::weak_ptr<Link::ForwardMaster> forward = link_->forward_master;
    std::weak_ptr<Link::BackwardMaster> backward = link_->backward_master;
    std::weak_ptr<Link::GhostForwardMaster> ghost_forward = link_->ghost_forward_master;
    std::weak_ptr<Link::GhostBackwardMaster> ghost_backward = link_->ghost_backward_master;
    context.on_failure(
        [forward, backward, ghost_forward, ghost_backward](int failed, const std::string& reason) {
          if (auto f = forward.lock()) f->abort_for(failed, reason);
          if (auto b = backward.lock()) b->abort_for(failed, reason);
          if (auto f = ghost_forward.lock()) f->abort_for(failed, reason);
          if (auto b = ghost_backward.lock()) b->abort_for(failed, reason);
        },
        [forward, backward, ghost_forward, ghost_backward] {
          if (auto f = forward.lock()) f->reset();
          if (auto b = backward.lock()) b->reset();
          if (auto f = ghost_forward.lock()) f->reset();
          if (auto b = ghost_backward.lock()) b->reset();
        });
  } else {
    const auto masters = context.get<Link::Masters>(name);
    link_->forward_pipe = masters->forward->register_slave(copy_id);
    link_->backward_pipe = masters->backward->register_slave(copy_id);
    link_->ghost_forward_pipe = masters->ghost_forward->register_slave(copy_id);
    link_->ghost_backward_pipe = masters->ghost_backward->register_slave(copy_id);
  }
}

BatchNorm::NormStats SyncBatchNorm::batch_statistics(const ShardStats& shard) {
  synced_forward_ = false;
  if (!is_training() || (copy_id_ < 0 && group_ == nullptr)) return BatchNorm::batch_statistics(shard);
  if (copy_id_ < 0) {
    // Not replicated: this process's batch is the shard; the other
    // processes' come through the group.
    const Finalized batch = finalize_statistics(across_processes(shard), StatsCover{});
    track_running(batch);
    synced_forward_ = true;
    return batch.norm;
  }
  if (copy_id_ != 0) {
    NormStats norm = link_->forward_pipe.run_slave(shard).norm;
    synced_forward_ = true;
    return norm;
  }
  const Finalized batch = link_->forward_master->run_master(shard);
  // Once per step, on copy 0 (whose buffers are the user's module's, aliased
  // or written back by the runtime), after every replica has its reply; a
  // round that failed updates nothing.
  track_running(batch);
  synced_forward_ = true;
  return batch.norm;
}

std::vector<std::pair<int, SyncBatchNorm::GhostReply>> SyncBatchNorm::ghost_merge_round(
    std::vector<std::pair<int, std::vector<ShardStats>>> parts) {
  const Device home = options().device;
  std::vector<ShardStats> all;
  for (const auto& [id, rows] : parts) all.insert(all.end(), rows.begin(), rows.end());
  // On copy 0's device (this is copy 0), whose running statistics the first
  // group updates, even when copy 0 holds no rows.
  const Device device = state_device().value_or(home);
  const JobRows job = rows_across_processes(all, device);
  const std::vector<Finalized> groups = ghost_groups(job.rows, device);  // throws for a bad batch size: the round fails
  const auto v = static_cast<std::size_t>(options().virtual_batch_size);
  std::vector<std::pair<int, GhostReply>> replies;
  std::size_t row = job.first;
  for (const auto& [id, rows] : parts) {
    GhostReply reply;
    const Device to = rows.empty() ? device : rows.front().mean.device();
    for (std::size_t i = 0; i < rows.size(); ++i, ++row) {
      const NormStats& norm = groups[row / v].norm;
      reply.rows.push_back(NormStats{norm.count, norm.mean.onto(to), norm.invstd.onto(to)});
    }
    if (id == 0) reply.first_group = groups.empty() ? Finalized{} : groups.front();
    replies.emplace_back(id, std::move(reply));
  }
  return replies;
}

std::vector<std::pair<int, std::vector<BatchNorm::GradSums>>> SyncBatchNorm::ghost_sum_round(
    std::vector<std::pair<int, std::vector<GradSums>>> parts) const {
  std::vector<GradSums> all;
  for (const auto& [id, rows] : parts) all.insert(all.end(), rows.begin(), rows.end());
  const std::size_t first = job_first_row();
  const std::vector<GradSums> sums = ghost_group_sums(row_sums_across_processes(all));
  const auto v = static_cast<std::size_t>(options().virtual_batch_size);
  std::vector<std::pair<int, std::vector<GradSums>>> replies;
  std::size_t row = first;
  for (const auto& [id, rows] : parts) {
    std::vector<GradSums> reply;
    for (std::size_t i = 0; i < rows.size(); ++i, ++row) {
      const Device to = rows[i].sum_dy.device();
      reply.push_back(GradSums{sums[row / v].sum_dy.onto(to), sums[row / v].sum_dy_xmu.onto(to)});
    }
    replies.emplace_back(id, std::move(reply));
  }
  return replies;
}

std::vector<BatchNorm::NormStats> SyncBatchNorm::ghost_statistics(const std::vector<ShardStats>& rows) {
  synced_forward_ = false;
  if (copy_id_ < 0 && group_ == nullptr) return BatchNorm::ghost_statistics(rows);
  if (copy_id_ < 0) {
    // Not replicated: this process's rows are its part of the job's batch.
    const Device device = rows.empty() ? options().device : rows.front().mean.device();
    const JobRows job = rows_across_processes(rows, device);
    const std::vector<Finalized> groups = ghost_groups(job.rows, device);
    track_running(groups.empty() ? Finalized{} : groups.front());
    const auto v = static_cast<std::size_t>(options().virtual_batch_size);
    std::vector<NormStats> norms;
    for (std::size_t i = 0; i < rows.size(); ++i) norms.push_back(groups[(job.first + i) / v].norm);
    synced_forward_ = true;
    return norms;
  }
  if (copy_id_ != 0) {
    std::vector<NormStats> norms = link_->ghost_forward_pipe.run_slave(rows).rows;
    synced_forward_ = true;
    return norms;
  }
  GhostReply reply = link_->ghost_forward_master->run_master(rows);
  // As for whole batches: copy 0 updates the running statistics once, after
  // every replica has its reply, from the first ghost batch (tensorpack's).
  track_running(reply.first_group.value_or(Finalized{}));
  synced_forward_ = true;
  return std::move(reply.rows);
}

std::vector<BatchNorm::GradSums> SyncBatchNorm::ghost_gradient_sums(const std::vector<GradSums>& rows) {
  if (!synced_forward_) return BatchNorm::ghost_gradient_sums(rows);
  if (copy_id_ < 0) {
    const std::size_t first = job_first_row();
    const std::vector<GradSums> sums = ghost_group_sums(row_sums_across_processes(rows));
    const auto v = static_cast<std::size_t>(options().virtual_batch_size);
    std::vector<GradSums> per_row;
    for (std::size_t i = 0; i < rows.size(); ++i) per_row.push_back(sums[(first + i) / v]);
    return per_row;
  }
  return copy_id_ == 0 ? link_->ghost_backward_master->run_master(rows) : link_->ghost_backward_pipe.run_slave(rows);
}

std::size_t SyncBatchNorm::job_first_row() const {
  if (group_ == nullptr || group_->size() == 1) return 0;
  std::int64_t first = 0;
  for (int r = 0; r < group_->rank(); ++r) first += ghost_rank_rows_[static_cast<std::size_t>(r)];
  return static_cast<std::size_t>(first);
}

// Note [Parameter gradients from the exchanged sums]
// After the backward exchange every participant holds the whole batch's
// sum(dy) and sum(dy * (x - mean)) in float64. Each adding its own shard's
// share to a float32 gradient rounds every share (one of 8 replicas of 16k
// values per channel: an error of up to 4e-6 of a share of 130), and the
// runner's sum of the shares keeps those roundings, which a small total
// cannot absorb (measured: 2.3e-5 of max(1, |dw|)). So one participant,
// copy 0 of rank 0, takes the whole batch's gradients and the others none:
// the runner's sum (DataParallel's replica sum, DistributedDataParallel's
// all-reduce) is then the total rounded once.
BatchNorm::ParamShare SyncBatchNorm::param_share() const {
  if (!synced_forward_) return ParamShare::Local;
  const bool first_process = group_ == nullptr || group_->rank() == 0;
  return copy_id_ <= 0 && first_process ? ParamShare::Whole : ParamShare::None;
}

BatchNorm::GradSums SyncBatchNorm::gradient_sums(const GradSums& local) {
  if (!synced_forward_) return local;
  if (copy_id_ < 0) return across_processes(local);
  return copy_id_ == 0 ? link_->backward_master->run_master(local) : link_->backward_pipe.run_slave(local);
}

namespace {

// Note [Conversions change all or nothing]
// A conversion decides every replacement before it makes the first: the
// walk builds the new layers (which is where a refusal is thrown) and only
// then are they put in place, so a refused conversion leaves the tree as it
// was.
struct Replacement {
  Module* parent;
  std::string name;
  std::shared_ptr<Module> with;
};

// `replace(m)` gives the module that takes m's place, null to keep m and
// look into its children, or throws to refuse the whole conversion.
template <class Replace>
void plan_replacements(Module& parent, const Replace& replace, std::vector<Replacement>& plan) {
  for (const auto& [name, child] : parent.children()) {
    if (auto with = replace(*child))
      plan.push_back(Replacement{&parent, name, std::move(with)});
    else
      plan_replacements(*child, replace, plan);
  }
}

template <class Replace>
std::shared_ptr<Module> replace_in_tree(std::shared_ptr<Module> root, const Replace& replace) {
  if (auto with = replace(*root)) return with;
  std::vector<Replacement> plan;
  plan_replacements(*root, replace, plan);
  for (Replacement& r : plan) r.parent->replace_child(r.name, std::move(r.with));
  return root;
}

std::shared_ptr<SyncBatchNorm> make_sync(const BatchNorm& bn, std::chrono::milliseconds timeout,
                                         const std::shared_ptr<comm::ProcessGroup>& group) {
  switch (bn.spatial_dims()) {
    case 1: return std::make_shared<SyncBatchNorm1d>(bn.num_features(), bn.options(), timeout, group);
    case 2: return std::make_shared<SyncBatchNorm2d>(bn.num_features(), bn.options(), timeout, group);
    default: return std::make_shared<SyncBatchNorm3d>(bn.num_features(), bn.options(), timeout, group);
  }
}

bool is_plain(const Module& m) {
  const auto& type = typeid(m);
  return type == typeid(BatchNorm1d) || type == typeid(BatchNorm2d) || type == typeid(BatchNorm3d);
}

std::shared_ptr<BatchNorm> make_plain(const SyncBatchNorm& bn) {
  switch (bn.spatial_dims()) {
    case 1: return std::make_shared<BatchNorm1d>(bn.num_features(), bn.options());
    case 2: return std::make_shared<BatchNorm2d>(bn.num_features(), bn.options());
    default: return std::make_shared<BatchNorm3d>(bn.num_features(), bn.options());
  }
}

bool is_plain_sync(const Module& m) {
  const auto& type = typeid(m);
  return type == typeid(SyncBatchNorm1d) || type == typeid(SyncBatchNorm2d) || type == typeid(SyncBatchNorm3d);
}

}  // namespace

std::shared_ptr<Module> convert_sync_batchnorm(std::shared_ptr<Module> module, std::chrono::milliseconds sync_timeout,
                                               std::shared_ptr<comm::ProcessGroup> process_group) {
  SYNCBN_CHECK(module != nullptr, "convert_sync_batchnorm: module is null, expected a module");
  SYNCBN_CHECK(sync_timeout.count() >= 0, "convert_sync_batchnorm: sync_timeout is ", sync_timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
  const auto replace = [&](Module& m) -> std::shared_ptr<Module> {
    if (is_plain(m)) {
      auto& bn = static_cast<BatchNorm&>(m);
      auto sync = make_sync(bn, sync_timeout, process_group);
      sync->take_state_of(bn);
      return sync;
    }
    // A user's subclass of BatchNorm1d/2d/3d would lose its overrides in a
    // plain SyncBatchNorm*d: refuse rather than drop them silently.
    if (const auto* bn = dynamic_cast<const BatchNorm*>(&m); bn != nullptr && dynamic_cast<const SyncBatchNorm*>(bn) == nullptr)
      SYNCBN_THROW(InvalidArgument, "convert_sync_batchnorm: ", bn->describe(), " is a subclass of ", bn->kind(),
                   ", expected BatchNorm1d, BatchNorm2d or BatchNorm3d itself (converting it would drop its "
                   "overrides; give it a synchronized version of its own); nothing was converted");
    return nullptr;
  };
  return replace_in_tree(std::move(module), replace);
}

std::shared_ptr<Module> revert_sync_batchnorm(std::shared_ptr<Module> module) {
  SYNCBN_CHECK(module != nullptr, "revert_sync_batchnorm: module is null, expected a module");
  const auto replace = [](Module& m) -> std::shared_ptr<Module> {
    if (is_plain_sync(m)) {
      auto& sync = static_cast<SyncBatchNorm&>(m);
      auto plain = make_plain(sync);
      plain->take_state_of(sync);
      return plain;
    }
    if (const auto* sync = dynamic_cast<const SyncBatchNorm*>(&m))
      SYNCBN_THROW(InvalidArgument, "revert_sync_batchnorm: ", sync->describe(), " is a subclass of ", sync->kind(),
                   ", expected SyncBatchNorm1d, SyncBatchNorm2d or SyncBatchNorm3d itself (reverting it would drop "
                   "its overrides); nothing was reverted");
    return nullptr;
  };
  return replace_in_tree(std::move(module), replace);
}

}  // namespace syncbn::nn
