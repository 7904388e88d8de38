// StatsExchange: one exchange behind every batch-norm path (Note [One
// exchange]). Numerics: docs/numerics.md.

#include "syncbn/comm/stats_exchange.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "channel_rows.hpp"
#include "syncbn/comm/collectives.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/error.hpp"

namespace syncbn::comm {

// Note [One exchange]
// Batch norm, synchronized batch norm and ghost batch norm differ only in
// which rows share statistics. Each participant hands in segments (runs of
// its rows with their moments, or gradient sums); the batch's segments, in
// replica order within a process and rank order across processes, fall into
// groups (all of them, or V consecutive ones); each group is merged (Chan's
// update in batch order) and finalized, or summed, once; and each segment
// gets its group's result. The levels compose instead of branching per
// path:
//   participant --(replicas: SyncMaster pair, copy 0 merges)--> process
//   process --(processes: the merging participant's collectives)--> job
// A not-replicated layer is its own process's only participant; a layer
// without a process group is its job. Forward across processes, one group:
// each process merges its replicas' segments on copy 0's device
// (core::merge_moments), all-gathers that (count, mean, M2) and every rank
// merges the ranks' parts in rank order with core::HostMoments, so every
// rank holds the same bits; backward, a rank-order all-reduce of the sums.
// Groups of V segments: the processes all-gather their segment counts, then
// their segments (padded to the longest), and every rank forms the same
// groups from the same rows with the same code (the counts are kept in the
// JobLayout for the backward of the same pass). The rows travel in one
// packing (channel_rows.hpp).

struct StatsExchange::Round {
  std::int64_t segments_per_group = 0;
  Device home;
  const Finalize* finalize = nullptr;  // forward
  const JobLayout* layout = nullptr;   // backward
};

namespace {

// Note [Host staging across processes]
// The processes level moves a layer's statistics through host buffers at
// every step: the packed rows, the ranks' rows, the sums. Fresh vectors of
// tens of KiB per step made glibc grow and trim the leading thread's heap
// every step, and fault the pages in again: at 1024 channels the layer's
// exchange across two processes cost several times its collectives
// (docs/performance.md, "Buffers kept across processes"). So each thread
// that leads rounds keeps its buffers, grown to the largest layer it led;
// the process group keeps its own (ProcessGroup::all_reduce_sum into a
// buffer, the engines' Note [Buffers kept between collectives]).
struct HostStaging {
  std::vector<std::byte> payload, gathered;
  std::vector<double> sums;
  std::vector<double> mean, m2;  // one rank's vectors, for the merge
  core::HostMoments merged;
};

HostStaging& host_staging() {
  thread_local HostStaging staging;
  return staging;
}

// Rows as they cross between replica threads: one row inline, more in a
// vector. A heap block allocated on one thread and freed on another makes
// glibc's arenas contend (docs/performance.md, "One exchange"), and a batch
// norm's messages hold one segment but for ghost batches.
template <class Row>
struct Carried {
  std::optional<Row> one;
  std::vector<Row> many;

  static Carried take(std::vector<Row>& rows) {
    Carried c;
    if (rows.size() == 1)
      c.one = std::move(rows.front());
    else
      c.many = std::move(rows);
    return c;
  }
  std::size_t size() const noexcept { return one ? 1 : many.size(); }
  void move_into(std::vector<Row>& out) {
    if (one)
      out.push_back(std::move(*one));
    else
      std::move(many.begin(), many.end(), std::back_inserter(out));
  }
  std::vector<Row> release() {
    if (!one) return std::move(many);
    std::vector<Row> rows;
    rows.push_back(std::move(*one));
    return rows;
  }
};

// A replica's forward reply: its segments' statistics, and on copy 0 the
// process's first group and layout.
struct ForwardReply {
  Carried<GroupStats> per_segment;
  std::optional<GroupStats> first_group;
  JobLayout layout;
};

}  // namespace

struct ReplicaRendezvous::Masters {
  using Forward = sync::SyncMaster<Carried<core::ChannelMoments>, ForwardReply>;
  using Backward = sync::SyncMaster<Carried<core::ChannelGradSums>, Carried<core::ChannelGradSums>>;
  std::unique_ptr<Forward> forward;
  std::unique_ptr<Backward> backward;
};

// What a replicated participant holds: the rendezvous, its pipes (copies
// 1..), and on copy 0 the round its masters' callbacks serve.
struct StatsExchange::Replicas {
  std::shared_ptr<ReplicaRendezvous> rendezvous;
  ReplicaRendezvous::Masters::Forward::Pipe forward_pipe;
  ReplicaRendezvous::Masters::Backward::Pipe backward_pipe;
  const Round* round = nullptr;
};

ReplicaRendezvous::ReplicaRendezvous(std::unique_ptr<Masters> masters) : masters_(std::move(masters)) {}
ReplicaRendezvous::~ReplicaRendezvous() = default;

void ReplicaRendezvous::abort_for(int failed, const std::string& reason) noexcept {
  // A replica that is not in the rendezvous (InvalidArgument) has nothing to release.
  try {
    masters_->forward->abort_for(failed, reason);
  } catch (...) {
  }
  try {
    masters_->backward->abort_for(failed, reason);
  } catch (...) {
  }
}

void ReplicaRendezvous::reset() {
  masters_->forward->reset();
  masters_->backward->reset();
}

namespace {

// A group's statistics as a segment on `device` receives them.
GroupStats on_device(const GroupStats& group, Device device) {
  return GroupStats{group.count, group.mean.onto(device), group.invstd.onto(device), Tensor()};
}

core::ChannelGradSums on_device(const core::ChannelGradSums& sums, Device device) {
  return detail::map_grad_sums(sums, [device](const Tensor& t) { return t.onto(device); });
}

// Segments [begin, end) merged in order on `home`; one segment is itself.
// core::merge_moments takes up to kMaxReplicas parts: longer runs merge in
// steps, each continuing from the last.
core::ChannelMoments merge_run(const std::vector<core::ChannelMoments>& segments, std::size_t begin, std::size_t end,
                               Device home) {
  if (end - begin == 1) return segments[begin];
  const auto most = static_cast<std::size_t>(core::kMaxReplicas);
  if (end - begin <= most) return core::merge_moments({segments.data() + begin, end - begin}, home);
  core::ChannelMoments merged = segments[begin];
  for (std::size_t first = begin + 1; first < end;) {
    const std::size_t last = std::min(end, first + most - 1);
    std::vector<core::ChannelMoments> parts{merged};
    parts.insert(parts.end(), segments.begin() + static_cast<std::ptrdiff_t>(first),
                 segments.begin() + static_cast<std::ptrdiff_t>(last));
    merged = core::merge_moments(parts, home);
    first = last;
  }
  return merged;
}

// One group's segments (one per replica, so at most kMaxReplicas) summed
// in order, in float64, on the first one's device.
core::ChannelGradSums sum_all(const std::vector<core::ChannelGradSums>& segments) {
  if (segments.size() == 1) return segments.front();
  std::vector<std::vector<Tensor>> groups;
  groups.reserve(segments.size());
  for (const auto& s : segments) {
    std::vector<Tensor>& group = groups.emplace_back();
    for (const auto field : detail::kGradSumFields) group.push_back(s.*field);
  }
  const auto total = reduce_add_coalesced(groups, segments.front().sum_dy.device(), Transport::Copy);
  core::ChannelGradSums out;
  for (std::size_t k = 0; k < detail::kGradSumFields.size(); ++k) out.*detail::kGradSumFields[k] = total[k];
  return out;
}

// Where this process's segments start among the job's.
std::size_t first_of_rank(const std::vector<std::int64_t>& rank_rows, int rank) {
  std::int64_t first = 0;
  for (int r = 0; r < rank; ++r) first += rank_rows[static_cast<std::size_t>(r)];
  return static_cast<std::size_t>(first);
}

// The segments' replies split back to the participants that sent them
// (split moves each participant's part out of the process's result).
template <class Msg, class Reply, class Split>
std::vector<std::pair<int, Reply>> split_replies(const std::vector<std::pair<int, Msg>>& parts, Split&& split) {
  std::vector<std::pair<int, Reply>> replies;
  replies.reserve(parts.size());
  std::size_t at = 0;
  for (const auto& [id, segments] : parts) {
    replies.emplace_back(id, split(id, at, segments.size()));
    at += segments.size();
  }
  return replies;
}

template <class Row>
std::vector<Row> concatenate(std::vector<std::pair<int, Carried<Row>>>& parts) {
  std::size_t n = 0;
  for (const auto& [id, segments] : parts) n += segments.size();
  std::vector<Row> all;
  all.reserve(n);
  for (auto& [id, segments] : parts) segments.move_into(all);
  return all;
}

// Rows [at, at + n) of `rows`, moved out, as a reply carries them.
template <class Row>
Carried<Row> carry(std::vector<Row>& rows, std::size_t at, std::size_t n) {
  Carried<Row> c;
  if (n == 1) {
    c.one = std::move(rows[at]);
    return c;
  }
  const auto first = rows.begin() + static_cast<std::ptrdiff_t>(at);
  c.many.assign(std::make_move_iterator(first), std::make_move_iterator(first + static_cast<std::ptrdiff_t>(n)));
  return c;
}

}  // namespace

StatsExchange::StatsExchange(Options options) : options_(std::move(options)) {
  SYNCBN_CHECK(options_.channels > 0, options_.name, ": StatsExchange: ", options_.channels,
               " channels, expected > 0");
  SYNCBN_CHECK(options_.timeout.count() >= 0, options_.name, ": StatsExchange: timeout ", options_.timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
}

StatsExchange::~StatsExchange() = default;

std::shared_ptr<ReplicaRendezvous> StatsExchange::lead_replicas(std::shared_ptr<sync::Whereabouts> whereabouts) {
  auto masters = std::make_unique<ReplicaRendezvous::Masters>();
  // The callbacks run on copy 0's thread inside its merge and sum, which
  // set the round they serve; copy 0's exchange outlives its calls.
  masters->forward = std::make_unique<ReplicaRendezvous::Masters::Forward>(
      [this](std::vector<std::pair<int, Carried<core::ChannelMoments>>> parts) {
        MergedStats process = merge_process(concatenate(parts), *replicas_->round);
        return split_replies<Carried<core::ChannelMoments>, ForwardReply>(
            parts, [&](int id, std::size_t at, std::size_t n) {
              ForwardReply reply;
              reply.per_segment = carry(process.per_segment, at, n);
              // Copy 0 updates the running statistics, once, for the process.
              if (id == 0) {
                reply.first_group = std::move(process.first_group);
                reply.layout = std::move(process.layout);
              }
              return reply;
            });
      },
      sync::SyncOptions{options_.name + " forward", options_.timeout, {}, whereabouts});
  masters->backward = std::make_unique<ReplicaRendezvous::Masters::Backward>(
      [this](std::vector<std::pair<int, Carried<core::ChannelGradSums>>> parts) {
        std::vector<core::ChannelGradSums> process = sum_process(concatenate(parts), *replicas_->round);
        return split_replies<Carried<core::ChannelGradSums>, Carried<core::ChannelGradSums>>(
            parts, [&](int, std::size_t at, std::size_t n) { return carry(process, at, n); });
      },
      sync::SyncOptions{options_.name + " backward", options_.timeout, {}, std::move(whereabouts)});
  replicas_ = std::make_unique<Replicas>();
  replicas_->rendezvous = std::shared_ptr<ReplicaRendezvous>(new ReplicaRendezvous(std::move(masters)));
  copy_id_ = 0;
  return replicas_->rendezvous;
}

void StatsExchange::join_replicas(const std::shared_ptr<ReplicaRendezvous>& rendezvous, int copy_id) {
  SYNCBN_CHECK(rendezvous != nullptr, options_.name, ": join_replicas: the rendezvous is null, expected copy 0's");
  SYNCBN_CHECK(copy_id >= 1, options_.name, ": join_replicas: copy ", copy_id, ", expected >= 1 (copy 0 leads)");
  auto replicas = std::make_unique<Replicas>();
  replicas->rendezvous = rendezvous;
  replicas->forward_pipe = rendezvous->masters_->forward->register_slave(copy_id);
  replicas->backward_pipe = rendezvous->masters_->backward->register_slave(copy_id);
  replicas_ = std::move(replicas);
  copy_id_ = copy_id;
}

bool StatsExchange::synchronizes() const noexcept { return replicas_ != nullptr || across_processes(); }

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
ParamShare StatsExchange::param_share() const noexcept {
  if (!synchronizes()) return ParamShare::Local;
  const bool first_process = options_.processes == nullptr || options_.processes->rank() == 0;
  return copy_id_ <= 0 && first_process ? ParamShare::Whole : ParamShare::None;
}

template <class Row>
void StatsExchange::check_segments(const std::vector<Row>& segments, std::int64_t segments_per_group,
                                   const char* call) const {
  SYNCBN_CHECK(segments_per_group >= 0, options_.name, ": StatsExchange::", call, ": ", segments_per_group,
               " segments per group, expected >= 0 (0: one group)");
  SYNCBN_CHECK(segments_per_group > 0 || segments.size() == 1, options_.name, ": StatsExchange::", call, ": ",
               segments.size(), " segments for one group, expected 1 per participant");
}

MergedStats StatsExchange::merge(std::vector<core::ChannelMoments> segments, std::int64_t segments_per_group,
                                 Device home, const Finalize& finalize) {
  check_segments(segments, segments_per_group, "merge");
  const Round round{segments_per_group, home, &finalize, nullptr};
  if (replicas_ == nullptr) return merge_process(std::move(segments), round);
  ForwardReply reply;
  if (copy_id_ != 0) {
    reply = replicas_->forward_pipe.run_slave(Carried<core::ChannelMoments>::take(segments));
  } else {
    replicas_->round = &round;
    reply = replicas_->rendezvous->masters_->forward->run_master(Carried<core::ChannelMoments>::take(segments));
  }
  return MergedStats{reply.per_segment.release(), std::move(reply.first_group), std::move(reply.layout)};
}

std::vector<core::ChannelGradSums> StatsExchange::sum(std::vector<core::ChannelGradSums> segments,
                                                      std::int64_t segments_per_group, Device home,
                                                      const JobLayout& layout) {
  check_segments(segments, segments_per_group, "sum");
  // Sums about a mean known to be exact may leave sum(x - mean) out: zeros.
  for (auto& segment : segments)
    if (!segment.sum_xmu.defined() && segment.sum_dy.defined())
      segment.sum_xmu = Tensor::zeros(segment.sum_dy.shape(), DType::Float64, segment.sum_dy.device());
  const Round round{segments_per_group, home, nullptr, &layout};
  if (replicas_ == nullptr) return sum_process(std::move(segments), round);
  if (copy_id_ != 0) return replicas_->backward_pipe.run_slave(Carried<core::ChannelGradSums>::take(segments)).release();
  replicas_->round = &round;
  return replicas_->rendezvous->masters_->backward->run_master(Carried<core::ChannelGradSums>::take(segments)).release();
}

MergedStats StatsExchange::merge_process(std::vector<core::ChannelMoments> segments, const Round& round) const {
  MergedStats out;
  const std::int64_t v = round.segments_per_group;
  if (v == 0) {
    core::ChannelMoments merged = merge_run(segments, 0, segments.size(), round.home);
    if (across_processes()) merged = merge_across_processes(merged);
    GroupStats group = (*round.finalize)(merged, GroupPlace{0, 0});
    for (const auto& segment : segments) out.per_segment.push_back(on_device(group, segment.mean.device()));
    out.first_group = std::move(group);
    return out;
  }
  // The job's segments: the gathered ones across processes, else this process's.
  std::vector<core::ChannelMoments> gathered;
  std::size_t first = 0;
  if (across_processes()) {
    out.layout.rank_segments = gather_row_counts(static_cast<std::int64_t>(segments.size()));
    gathered = gather_rows(segments, out.layout.rank_segments, options_.name + " forward", round.home);
    first = first_of_rank(out.layout.rank_segments, options_.processes->rank());
  }
  const std::vector<core::ChannelMoments>& job = across_processes() ? gathered : segments;
  const auto n = static_cast<std::int64_t>(job.size());
  SYNCBN_CHECK(n % v == 0, options_.name, ": a batch of ", n, " samples is not a multiple of virtual_batch_size ", v,
               ", expected a multiple");
  std::vector<GroupStats> groups;
  for (std::int64_t g = 0; g < n / v; ++g)
    groups.push_back((*round.finalize)(
        merge_run(job, static_cast<std::size_t>(g * v), static_cast<std::size_t>((g + 1) * v), round.home),
        GroupPlace{g, v}));
  for (std::size_t i = 0; i < segments.size(); ++i)
    out.per_segment.push_back(on_device(groups[(first + i) / static_cast<std::size_t>(v)], segments[i].mean.device()));
  // An empty batch has no first group; it still counts as a batch.
  out.first_group = groups.empty() ? GroupStats{} : groups.front();
  return out;
}

std::vector<core::ChannelGradSums> StatsExchange::sum_process(std::vector<core::ChannelGradSums> segments,
                                                              const Round& round) const {
  const std::int64_t v = round.segments_per_group;
  std::vector<core::ChannelGradSums> out;
  out.reserve(segments.size());
  if (v == 0) {
    // A participant alone: its own sums, as they are.
    if (segments.size() == 1 && !across_processes()) return segments;
    core::ChannelGradSums total = sum_all(segments);
    if (across_processes()) total = sum_across_processes(total);
    for (const auto& segment : segments) out.push_back(on_device(total, segment.sum_dy.device()));
    return out;
  }
  std::vector<core::ChannelGradSums> gathered;
  std::size_t first = 0;
  if (across_processes()) {
    const std::vector<std::int64_t>& rank_rows = round.layout->rank_segments;
    gathered = gather_rows(segments, rank_rows, options_.name + " backward",
                           segments.empty() ? round.home : segments.front().sum_dy.device());
    first = first_of_rank(rank_rows, options_.processes->rank());
  }
  const std::vector<core::ChannelGradSums>& job = across_processes() ? gathered : segments;
  const auto per = static_cast<std::size_t>(v);
  std::vector<core::ChannelGradSums> groups;
  for (std::size_t begin = 0; begin < job.size(); begin += per) {
    // In order on the group's first row's device.
    core::ChannelGradSums total = detail::map_grad_sums(job[begin], [](const Tensor& t) { return t.clone(); });
    const Device device = total.sum_dy.device();
    for (std::size_t i = begin + 1; i < begin + per; ++i)
      for (const auto field : detail::kGradSumFields) core::add_(total.*field, (job[i].*field).onto(device));
    groups.push_back(std::move(total));
  }
  for (std::size_t i = 0; i < segments.size(); ++i)
    out.push_back(on_device(groups[(first + i) / per], segments[i].sum_dy.device()));
  return out;
}

core::ChannelMoments StatsExchange::merge_across_processes(const core::ChannelMoments& process) const {
  const auto c = static_cast<std::size_t>(options_.channels);
  HostStaging& staging = host_staging();
  detail::pack_rows<core::ChannelMoments>({&process, 1}, 1, c, staging.payload);
  staging.gathered.resize(staging.payload.size() * static_cast<std::size_t>(options_.processes->size()));
  options_.processes->all_gather(staging.payload, staging.gathered, options_.name + " forward", options_.timeout);
  core::HostMoments& merged = staging.merged;
  merged.count = 0;
  merged.mean.clear();
  merged.m2.clear();
  staging.mean.resize(c);
  staging.m2.resize(c);
  for (int r = 0; r < options_.processes->size(); ++r) {
    const std::byte* at = staging.gathered.data() + static_cast<std::size_t>(r) * staging.payload.size();
    std::int64_t count = 0;
    std::memcpy(&count, at, sizeof count);
    std::memcpy(staging.mean.data(), at + detail::vector_offset<core::ChannelMoments>(c, 0), c * sizeof(double));
    std::memcpy(staging.m2.data(), at + detail::vector_offset<core::ChannelMoments>(c, 1), c * sizeof(double));
    merged.merge(count, staging.mean, staging.m2);
  }
  const Device device = process.mean.device();
  const Shape shape{options_.channels};
  return core::ChannelMoments{merged.count, Tensor::empty(shape, DType::Float64, device).copy_(
                                                Tensor::from_blob(merged.mean.data(), shape, DType::Float64, Device())),
                              Tensor::empty(shape, DType::Float64, device).copy_(
                                  Tensor::from_blob(merged.m2.data(), shape, DType::Float64, Device()))};
}

core::ChannelGradSums StatsExchange::sum_across_processes(const core::ChannelGradSums& process) const {
  const auto c = static_cast<std::size_t>(options_.channels);
  HostStaging& staging = host_staging();
  staging.sums.resize(detail::kGradSumFields.size() * c);
  detail::write_row(reinterpret_cast<std::byte*>(staging.sums.data()), c, process);
  // In place: the group gathers the ranks' values into its own buffer first.
  options_.processes->all_reduce_sum(staging.sums, staging.sums, options_.name + " backward", options_.timeout);
  const Device device = process.sum_dy.device();
  const Shape shape{options_.channels};
  core::ChannelGradSums out;
  for (std::size_t k = 0; k < detail::kGradSumFields.size(); ++k)
    out.*detail::kGradSumFields[k] = Tensor::empty(shape, DType::Float64, device)
                                         .copy_(Tensor::from_blob(staging.sums.data() + k * c, shape, DType::Float64,
                                                                  Device()));
  return out;
}

std::vector<std::int64_t> StatsExchange::gather_row_counts(std::int64_t rows) const {
  std::vector<std::byte> bytes(sizeof rows);
  std::memcpy(bytes.data(), &rows, sizeof rows);
  const std::vector<std::byte> all =
      options_.processes->all_gather(bytes, options_.name + " forward rows", options_.timeout);
  std::vector<std::int64_t> counts(static_cast<std::size_t>(options_.processes->size()));
  std::memcpy(counts.data(), all.data(), counts.size() * sizeof(std::int64_t));
  return counts;
}

template <class Row>
std::vector<Row> StatsExchange::gather_rows(const std::vector<Row>& process, const std::vector<std::int64_t>& rank_rows,
                                            const std::string& call, Device device) const {
  const auto c = static_cast<std::size_t>(options_.channels);
  const auto most = static_cast<std::size_t>(*std::max_element(rank_rows.begin(), rank_rows.end()));
  HostStaging& staging = host_staging();
  detail::pack_rows<Row>(process, most, c, staging.payload);
  const std::size_t payload = staging.payload.size();
  staging.gathered.resize(payload * rank_rows.size());
  options_.processes->all_gather(staging.payload, staging.gathered, call, options_.timeout);
  const std::size_t bytes = detail::row_bytes<Row>(c);
  std::vector<Row> job;
  for (std::size_t r = 0; r < rank_rows.size(); ++r)
    for (std::int64_t i = 0; i < rank_rows[r]; ++i)
      job.push_back(detail::read_row<Row>(
          staging.gathered.data() + r * payload + static_cast<std::size_t>(i) * bytes, c, device));
  return job;
}

}  // namespace syncbn::comm
