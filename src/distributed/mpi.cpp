// The MPI backend of syncbn::distributed: a ProcessGroup over an MPI communicator
// whose collectives are MPI's non-blocking ones, polled until they complete
// or the deadline passes (Note [Waiting on MPI]).

#include "syncbn/distributed/mpi.hpp"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <memory>
#include <vector>
#include <cstring>
#include <span>
#include <cstdio>
#include <sstream>
#include <thread>

#include "syncbn/error.hpp"

namespace syncbn::distributed {
namespace {

std::atomic<bool> g_session{false};

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

void check_mpi(int code, const char* what) {
  if (code != MPI_SUCCESS) SYNCBN_THROW(CommError, what, ": MPI failed: ", mpi_error_text(code));
}

// Note [Waiting on MPI]
// A blocking MPI collective cannot be given a deadline, so every collective
// is started non-blocking and polled with MPI_Test. A rank that never
// arrives then becomes a Timeout instead of a hang. MPI cannot cancel a
// collective under way (MPI_Cancel and MPI_Request_free are erroneous for
// them), so the request is left behind, with buffers the group owns (the
// collective completes, and writes them, whenever the other ranks arrive:
// a buffer of the caller's would be reused memory by then), and the group
// refuses every later collective (ProcessGroup's failure state); the
// application ends the job (abort_job) or goes on without the group. Polling yields the thread
// between tests: the rank that waits leaves its core to the replica threads.
class MpiProcessGroup final : public comm::ProcessGroup {
 public:
  MpiProcessGroup(MPI_Comm comm, int rank, int size, std::string description,
                  std::shared_ptr<std::atomic<bool>> session_alive)
      : ProcessGroup(rank, size), comm_(comm), description_(std::move(description)),
        session_alive_(std::move(session_alive)) {}
  ~MpiProcessGroup() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && *session_alive_) MPI_Comm_free(&comm_);
  }

  std::string describe() const override { return description_; }
  MPI_Comm comm() const { return comm_; }

 protected:
  void exchange(const void* in, std::size_t bytes, void* out, const Wait& wait) override {
    check_usable(bytes, wait);
    std::unique_ptr<Pending> op = take_pending();
    op->send.assign(static_cast<const std::byte*>(in), static_cast<const std::byte*>(in) + bytes);
    op->receive.resize(bytes * static_cast<std::size_t>(size()));
    check_mpi(MPI_Iallgather(op->send.data(), static_cast<int>(bytes), MPI_BYTE, op->receive.data(),
                             static_cast<int>(bytes), MPI_BYTE, comm_, &op->request),
              "MPI_Iallgather");
    complete(std::move(op), wait, out);
  }

  void exchange_broadcast(void* data, std::size_t bytes, int root, const Wait& wait) override {
    check_usable(bytes, wait);
    std::unique_ptr<Pending> op = take_pending();
    op->receive.assign(static_cast<const std::byte*>(data), static_cast<const std::byte*>(data) + bytes);
    check_mpi(MPI_Ibcast(op->receive.data(), static_cast<int>(bytes), MPI_BYTE, root, comm_, &op->request),
              "MPI_Ibcast");
    complete(std::move(op), wait, data);
  }

 private:
  // A collective under way with the buffers MPI reads and writes. The group
  // owns them, not the caller: a collective given up at its deadline still
  // completes whenever the other ranks arrive, and then writes into them.
  struct Pending {
    std::vector<std::byte> send, receive;
    MPI_Request request = MPI_REQUEST_NULL;
  };

  // Note [Buffers kept between collectives]
  // A layer synchronized across processes makes the same small collectives
  // every step. Fresh buffers of tens of KiB per collective made glibc grow
  // and trim the thread's heap each time (and fault the pages in again),
  // several times the collective's own cost at 1024 channels; so the
  // buffers of a completed collective are kept for the next, up to
  // kKeptBytes (a model's gradients are not worth holding between steps).
  // An abandoned collective's buffers are never reused: MPI may still write
  // them.
  static constexpr std::size_t kKeptBytes = std::size_t{1} << 20;

  std::unique_ptr<Pending> take_pending() {
    if (kept_) return std::move(kept_);
    return std::make_unique<Pending>();
  }
  void keep_pending(std::unique_ptr<Pending> op) {
    if (op->send.capacity() + op->receive.capacity() <= kKeptBytes) kept_ = std::move(op);
  }

  void check_usable(std::size_t bytes, const Wait& wait) const {
    if (!*session_alive_)
      SYNCBN_THROW(CommError, "'", wait.call, "': ", description_,
                   " is used after its MpiSession ended, expected the session to outlive its groups");
    if (bytes > static_cast<std::size_t>(INT_MAX) / static_cast<std::size_t>(size()))
      SYNCBN_THROW(InvalidArgument, "'", wait.call, "': ", bytes, " bytes per rank, expected at most ",
                   INT_MAX / size(), " (MPI's int count over ", size(), " ranks)");
  }

  // Polls until the collective completes (its result into `out`) or the
  // deadline passes (Timeout; the buffers stay with the group).
  void complete(std::unique_ptr<Pending> op, const Wait& wait, void* out) {
    for (;;) {
      int done = 0;
      const int code = MPI_Test(&op->request, &done, MPI_STATUS_IGNORE);
      if (code != MPI_SUCCESS) {
        abandoned_.push_back(std::move(op));
        check_mpi(code, "MPI_Test");
      }
      if (done) {
        if (!op->receive.empty()) std::memcpy(out, op->receive.data(), op->receive.size());
        keep_pending(std::move(op));
        return;
      }
      if (std::chrono::steady_clock::now() >= wait.deadline) {
        abandoned_.push_back(std::move(op));
        SYNCBN_THROW(Timeout, "'", wait.call, "': not every rank of ", description_, " arrived within ",
                     wait.timeout.count(), " ms, expected all ", size(),
                     " (a rank skipped this collective, stopped, or is a call behind)");
      }
      std::this_thread::yield();
    }
  }

  std::vector<std::unique_ptr<Pending>> abandoned_;
  std::unique_ptr<Pending> kept_;  // a completed collective's buffers, for the next
  MPI_Comm comm_;
  std::string description_;
  std::shared_ptr<std::atomic<bool>> session_alive_;
};

// The session's world group, for new_group.
std::shared_ptr<std::atomic<bool>> g_alive;

}  // namespace

bool has_mpi() noexcept { return true; }

MpiSession::MpiSession() {
  bool expected = false;
  SYNCBN_CHECK(g_session.compare_exchange_strong(expected, true),
               "MpiSession: a session already exists in this process, expected one at a time");
  try {
    int initialized = 0, provided = 0;
    check_mpi(MPI_Initialized(&initialized), "MpiSession");
    if (!initialized) {
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MpiSession: MPI_Init_thread");
      finalize_ = true;
    } else {
      check_mpi(MPI_Query_thread(&provided), "MpiSession: MPI_Query_thread");
    }
    if (provided < MPI_THREAD_SERIALIZED)
      SYNCBN_THROW(CommError, "MpiSession: MPI gives thread level ", provided, ", expected MPI_THREAD_SERIALIZED (",
                   MPI_THREAD_SERIALIZED, ") or higher (initialize MPI with MPI_Init_thread)");
    MPI_Comm comm = MPI_COMM_NULL;
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MpiSession: MPI_Comm_dup");
    // Errors come back as codes (CommError), not MPI's default abort.
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int rank = 0, size = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    g_alive = std::make_shared<std::atomic<bool>>(true);
    world_ = std::make_shared<MpiProcessGroup>(comm, rank, size, "MPI world of " + std::to_string(size) + " ranks",
                                               g_alive);
  } catch (...) {
    if (finalize_) MPI_Finalize();
    g_session = false;
    throw;
  }
}

MpiSession::~MpiSession() {
  world_.reset();
  *g_alive = false;
  g_alive.reset();
  if (finalize_) MPI_Finalize();
  g_session = false;
}

std::shared_ptr<comm::ProcessGroup> MpiSession::new_group(const std::vector<int>& world_ranks,
                                                          std::chrono::milliseconds timeout) const {
  const int world_size = world_->size();
  SYNCBN_CHECK(!world_ranks.empty(), "MpiSession::new_group: no ranks, expected 1 to ", world_size, " world ranks");
  for (std::size_t i = 0; i < world_ranks.size(); ++i) {
    SYNCBN_CHECK(world_ranks[i] >= 0 && world_ranks[i] < world_size, "MpiSession::new_group: rank ", world_ranks[i],
                 ", expected a world rank of 0 to ", world_size - 1);
    SYNCBN_CHECK(i == 0 || world_ranks[i] > world_ranks[i - 1], "MpiSession::new_group: rank ", world_ranks[i],
                 " follows ", world_ranks[i == 0 ? 0 : i - 1], ", expected increasing ranks without duplicates");
  }
  // Every process must pass the same list: all-gather a fixed-size digest
  // (the list's length and a hash) with a deadline, so that a process that
  // never calls, or calls with another list, fails here instead of hanging
  // in MPI_Comm_split.
  std::ostringstream text;
  for (int r : world_ranks) text << (text.tellp() > 0 ? ", " : "") << r;
  const std::string call = "MpiSession::new_group {" + text.str() + "}";
  std::uint64_t digest[2] = {world_ranks.size(), 1469598103934665603ull};
  for (int r : world_ranks) digest[1] = (digest[1] ^ static_cast<std::uint64_t>(r)) * 1099511628211ull;
  // One call name for every list, so that different lists are told apart
  // here, by the digests, and the world group stays consistent and usable.
  const auto all = world_->all_gather(std::as_bytes(std::span(digest)), "MpiSession::new_group", timeout);
  for (int r = 0; r < world_size; ++r)
    if (std::memcmp(all.data() + static_cast<std::size_t>(r) * sizeof(digest), digest, sizeof(digest)) != 0)
      SYNCBN_THROW(CommError, call, ": world rank ", r, " asks for another group, expected every process to pass "
                   "the same ranks");
  const int me = world_->rank();
  const auto it = std::find(world_ranks.begin(), world_ranks.end(), me);
  const bool member = it != world_ranks.end();
  MPI_Comm comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(static_cast<const MpiProcessGroup&>(*world_).comm(), member ? 0 : MPI_UNDEFINED,
                           static_cast<int>(it - world_ranks.begin()), &comm),
            "MpiSession::new_group: MPI_Comm_split");
  if (!member) return nullptr;
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  return std::make_shared<MpiProcessGroup>(comm, static_cast<int>(it - world_ranks.begin()),
                                           static_cast<int>(world_ranks.size()),
                                           "MPI group of " + std::to_string(world_ranks.size()) + " ranks (world ranks " +
                                               text.str() + ")",
                                           g_alive);
}

void abort_job(const std::string& message, int code) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();
}

}  // namespace syncbn::distributed
