#pragma once
// A group of processes that exchange data through collectives: what the
// layers below `distributed` see of other processes. syncbn::distributed implements it on
// an existing engine (MPI); the in-process runtime never needs one.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace syncbn::comm {

/// Processes (ranks 0 .. size() - 1) that make collectives together.
///
/// Every collective names the call it belongs to (`call`, e.g.
/// "SyncBatchNorm2d 'layer1.0.bn1' forward") and carries a sequence number
/// that the group counts. Before any data moves, the ranks exchange a fixed
/// header (call, sequence number, collective, size, root) and compare it: a
/// rank that makes a different call, a different collective or size, or is
/// a call ahead, makes the collective fail on every rank with a CommError
/// that names each rank's call. A rank that does not arrive within the
/// timeout makes the others fail with a Timeout naming the call. After a
/// failure the group refuses every further collective (CommError naming the
/// first failure): the engines cannot cancel a collective that is under
/// way, so the ranks no longer agree on what comes next (what to do with
/// the process then: the backend's documentation, e.g. distributed::abort_job).
///
/// A group is used by one thread at a time (collectives are serialized by
/// the group; the ranks' calls must come in the same order on every rank).
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  /// This process's rank in the group, 0 .. size() - 1.
  int rank() const noexcept { return rank_; }
  /// The number of processes in the group.
  int size() const noexcept { return size_; }
  /// The engine and the ranks, e.g. "MPI group of 2 ranks (world ranks 0, 2)".
  virtual std::string describe() const = 0;
  /// The collectives this rank has made in the group so far.
  std::int64_t calls() const;

  /// Every rank contributes the same number of bytes; returns size() times
  /// as many, the ranks' data in rank order.
  std::vector<std::byte> all_gather(std::span<const std::byte> data, std::string_view call,
                                    std::chrono::milliseconds timeout);
  /// The element-wise sum over the ranks, added in rank order in float64, so
  /// that every rank gets bit-identical sums. Every rank passes as many values.
  std::vector<double> all_reduce_sum(std::span<const double> values, std::string_view call,
                                     std::chrono::milliseconds timeout);
  /// The same two collectives into the caller's buffer: `out` holds
  /// size() * data.size() bytes, `sums` values.size() values (it may be
  /// `values` itself). Nothing is allocated per call, for callers that
  /// exchange every step (Note [Host staging across processes] in
  /// comm/stats_exchange.cpp); InvalidArgument, before any exchange, for a
  /// buffer of another size.
  void all_gather(std::span<const std::byte> data, std::span<std::byte> out, std::string_view call,
                  std::chrono::milliseconds timeout);
  void all_reduce_sum(std::span<const double> values, std::span<double> sums, std::string_view call,
                      std::chrono::milliseconds timeout);
  /// Root's bytes into every rank's `data` (the same size on every rank).
  void broadcast(std::span<std::byte> data, int root, std::string_view call, std::chrono::milliseconds timeout);
  /// Returns once every rank has made the same call.
  void barrier(std::string_view call, std::chrono::milliseconds timeout);

  /// What an engine's exchange (below) waits for, and how long.
  struct Wait {
    std::string_view call;                            // the caller's name of the collective
    std::chrono::steady_clock::time_point deadline;   // time_point::max(): none
    std::chrono::milliseconds timeout;                // the timeout that set it, for messages
  };

 protected:
  /// Throws InvalidArgument unless 0 <= rank < size.
  ProcessGroup(int rank, int size);

  /// The engine's all-gather of exactly `bytes` bytes per rank into `out`
  /// (size() * bytes, rank order); throws Timeout (naming the call) when the
  /// deadline passes first, or CommError when the engine fails.
  virtual void exchange(const void* in, std::size_t bytes, void* out, const Wait& wait) = 0;
  /// The engine's broadcast of `bytes` bytes from `root`; throws as exchange.
  virtual void exchange_broadcast(void* data, std::size_t bytes, int root, const Wait& wait) = 0;

 private:
  enum class Op : std::uint32_t { AllGather = 1, AllReduceSum, Broadcast, Barrier };
  // Checks the arguments, exchanges and compares the headers (CommError
  // naming each rank's call on a mismatch), then runs `body`; any failure
  // marks the group failed.
  template <class Body>
  void collective(Op op, std::string_view call, std::uint64_t bytes, int root, std::chrono::milliseconds timeout,
                  Body&& body);
  static const char* op_name(Op op) noexcept;

  int rank_;
  int size_;
  mutable std::mutex mutex_;  // serializes the collectives
  std::int64_t calls_ = 0;
  // all_reduce_sum's ranks' values, kept between calls up to kKeptBytes.
  static constexpr std::size_t kKeptBytes = std::size_t{1} << 20;
  std::vector<double> gathered_;
  std::string failure_;  // the first failure; non-empty: every collective refused
};

}  // namespace syncbn::comm
