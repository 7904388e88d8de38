// ProcessGroup: argument checks, the header exchange that makes the ranks
// agree on the collective before any data moves, and the failure state
// (Note [Collective headers]).

#include "syncbn/comm/process_group.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>

#include "syncbn/error.hpp"

namespace syncbn::comm {
namespace {

// Note [Collective headers]
// MPI and NCCL match collectives by order alone: a rank that calls another
// layer's exchange, or one call too many, pairs its data with the wrong
// call on the other ranks, or hangs. So every collective first all-gathers
// a fixed-size header (this rank's sequence number, the collective, its
// size and root, and the caller's name of the call) that is the same size
// whatever the call, so that the exchange itself always matches; every rank
// then compares all the headers with its own and, on any difference, throws
// the same CommError listing each rank's call, before the data of
// differing sizes is exchanged. The cost is one small all-gather more per
// collective (a few microseconds within a node).
struct Header {
  std::uint64_t sequence;
  std::uint64_t bytes;
  std::uint32_t op;
  std::int32_t root;
  std::uint32_t call_length;  // the name's full length; `call` holds its start
  char call[100];
};
static_assert(std::is_trivially_copyable_v<Header> && sizeof(Header) == 128);

Header make_header(std::uint64_t sequence, std::uint32_t op, std::uint64_t bytes, int root, std::string_view call) {
  Header h{};
  h.sequence = sequence;
  h.bytes = bytes;
  h.op = op;
  h.root = root;
  h.call_length = static_cast<std::uint32_t>(std::min<std::size_t>(call.size(), std::numeric_limits<std::uint32_t>::max()));
  std::memcpy(h.call, call.data(), std::min(call.size(), sizeof(h.call)));
  return h;
}

bool same(const Header& a, const Header& b) { return std::memcmp(&a, &b, sizeof(Header)) == 0; }

std::string call_text(const Header& h) {
  const std::size_t shown = std::min<std::size_t>(h.call_length, sizeof(h.call));
  std::string text(h.call, shown);
  if (h.call_length > shown) text += "...";
  return text;
}

// 0: no deadline; a timeout past the clock's range saturates.
std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto now = Clock::now();
  if (timeout.count() == 0 || timeout >= std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now))
    return Clock::time_point::max();
  return now + timeout;
}

}  // namespace

ProcessGroup::ProcessGroup(int rank, int size) : rank_(rank), size_(size) {
  SYNCBN_CHECK(size >= 1, "ProcessGroup: size ", size, ", expected >= 1");
  SYNCBN_CHECK(rank >= 0 && rank < size, "ProcessGroup: rank ", rank, ", expected 0 to ", size - 1);
}

std::int64_t ProcessGroup::calls() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return calls_;
}

const char* ProcessGroup::op_name(Op op) noexcept {
  switch (op) {
    case Op::AllGather: return "all_gather";
    case Op::AllReduceSum: return "all_reduce_sum";
    case Op::Broadcast: return "broadcast";
    case Op::Barrier: return "barrier";
  }
  return "an unknown collective";
}

template <class Body>
void ProcessGroup::collective(Op op, std::string_view call, std::uint64_t bytes, int root,
                              std::chrono::milliseconds timeout, Body&& body) {
  SYNCBN_CHECK(timeout.count() >= 0, op_name(op), " '", call, "': timeout ", timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
  std::lock_guard<std::mutex> lock(mutex_);
  if (!failure_.empty())
    SYNCBN_THROW(CommError, op_name(op), " '", call, "': ", describe(),
                 " failed earlier, expected a working group (the ranks no longer agree on the next collective): ",
                 failure_);
  const Wait wait{call, deadline_after(timeout), timeout};
  const std::uint64_t sequence = static_cast<std::uint64_t>(calls_++);
  try {
    const Header mine = make_header(sequence, static_cast<std::uint32_t>(op), bytes, root, call);
    std::vector<Header> all(static_cast<std::size_t>(size_));
    exchange(&mine, sizeof(Header), all.data(), wait);
    if (!std::all_of(all.begin(), all.end(), [&](const Header& h) { return same(h, mine); })) {
      // Every rank holds the same headers, so every rank writes this message.
      std::ostringstream os;
      os << op_name(op) << " '" << call << "': the ranks of " << describe()
         << " make different collectives, expected the same on every rank:";
      for (std::size_t first = 0; first < all.size();) {
        std::size_t last = first;
        while (last + 1 < all.size() && same(all[last + 1], all[first])) ++last;
        const Header& h = all[first];
        os << (first == 0 ? " " : "; ") << (first == last ? "rank " : "ranks ") << first;
        if (last != first) os << "-" << last;
        os << " in " << op_name(static_cast<Op>(h.op)) << " '" << call_text(h) << "' (call " << h.sequence << ", "
           << h.bytes << " bytes";
        if (static_cast<Op>(h.op) == Op::Broadcast) os << ", root " << h.root;
        os << ")";
        first = last + 1;
      }
      SYNCBN_THROW(CommError, os.str());
    }
    body(wait);
  } catch (const std::exception& e) {
    failure_ = e.what();
    throw;
  }
}

std::vector<std::byte> ProcessGroup::all_gather(std::span<const std::byte> data, std::string_view call,
                                                std::chrono::milliseconds timeout) {
  std::vector<std::byte> out(data.size() * static_cast<std::size_t>(size_));
  all_gather(data, out, call, timeout);
  return out;
}

void ProcessGroup::all_gather(std::span<const std::byte> data, std::span<std::byte> out, std::string_view call,
                              std::chrono::milliseconds timeout) {
  SYNCBN_CHECK(out.size() == data.size() * static_cast<std::size_t>(size_), "all_gather '", call, "': out holds ",
               out.size(), " bytes, expected ", data.size() * static_cast<std::size_t>(size_), " (", size_,
               " ranks x ", data.size(), ")");
  collective(Op::AllGather, call, data.size(), -1, timeout, [&](const Wait& wait) {
    if (!data.empty()) exchange(data.data(), data.size(), out.data(), wait);
  });
}

std::vector<double> ProcessGroup::all_reduce_sum(std::span<const double> values, std::string_view call,
                                                 std::chrono::milliseconds timeout) {
  std::vector<double> sums(values.size());
  all_reduce_sum(values, sums, call, timeout);
  return sums;
}

void ProcessGroup::all_reduce_sum(std::span<const double> values, std::span<double> sums, std::string_view call,
                                  std::chrono::milliseconds timeout) {
  SYNCBN_CHECK(sums.size() == values.size(), "all_reduce_sum '", call, "': sums holds ", sums.size(),
               " values, expected ", values.size(), " (one per value)");
  collective(Op::AllReduceSum, call, values.size_bytes(), -1, timeout, [&](const Wait& wait) {
    if (values.empty()) return;
    const std::size_t n = values.size();
    // The ranks' values in a buffer kept between calls up to kKeptBytes
    // (a layer's statistics, every step); a larger one (a model's
    // gradients) is not worth holding on to between steps.
    std::vector<double> large;
    std::vector<double>& all = n * static_cast<std::size_t>(size_) * sizeof(double) <= kKeptBytes ? gathered_ : large;
    all.resize(n * static_cast<std::size_t>(size_));
    exchange(values.data(), values.size_bytes(), all.data(), wait);
    // Rank order on every rank: bit-identical sums everywhere. Written
    // only after the exchange, so that `sums` may be `values`.
    for (std::size_t i = 0; i < n; ++i) {
      double sum = 0.0;
      for (int r = 0; r < size_; ++r) sum += all[static_cast<std::size_t>(r) * n + i];
      sums[i] = sum;
    }
  });
}

void ProcessGroup::broadcast(std::span<std::byte> data, int root, std::string_view call,
                             std::chrono::milliseconds timeout) {
  SYNCBN_CHECK(root >= 0 && root < size_, "broadcast '", call, "': root ", root, ", expected a rank of 0 to ",
               size_ - 1);
  collective(Op::Broadcast, call, data.size(), root, timeout, [&](const Wait& wait) {
    if (!data.empty()) exchange_broadcast(data.data(), data.size(), root, wait);
  });
}

void ProcessGroup::barrier(std::string_view call, std::chrono::milliseconds timeout) {
  // The header exchange is the barrier: no rank leaves it before all arrived.
  collective(Op::Barrier, call, 0, -1, timeout, [](const Wait&) {});
}

}  // namespace syncbn::comm
