#pragma once
// SyncMaster / SlavePipe: the master/slave rendezvous through which replica
// threads exchange per-round messages (e.g. batch-norm statistics).
//
// Protocol of one round (see docs/design.md, "The sync protocol"):
//   1. every slave i puts its message into its own message future and waits on
//      its own reply future;
//   2. the master (replica 0) takes the messages in increasing id order,
//      calls the callback with its own message first, checks the replies,
//      puts each slave's reply into that slave's reply future and returns its
//      own reply.
// Each slave has one message and one reply future of its own, so round r+1
// never mixes with round r: a slave cannot post message r+1 before it took
// reply r, and the master took message r before it produced reply r.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "syncbn/sync/future_result.hpp"
#include "syncbn/sync/wait_policy.hpp"
#include "syncbn/sync/whereabouts.hpp"
#include "syncbn/error.hpp"

namespace syncbn::sync {

/// Default time a participant waits for its peers before the round fails
/// with Timeout. Generous, because a peer may legitimately run a long layer
/// (or a first CUDA launch) before it arrives; tests use milliseconds.
inline constexpr std::chrono::milliseconds kDefaultSyncTimeout{std::chrono::minutes{5}};

/// Options of a SyncMaster, shared by all its pipes.
struct SyncOptions {
  /// Name used at the start of every error message, e.g. the layer's name.
  std::string name = "SyncMaster";
  /// How long a participant waits for the others in one round; zero waits forever.
  std::chrono::milliseconds timeout = kDefaultSyncTimeout;
  /// How waiters spin, yield and block (see WaitPolicy).
  WaitPolicy wait{};
  /// Shared by the rendezvous of one replicated model, so that a timeout
  /// says where every replica waits (Note [Where the replicas wait]); null:
  /// this rendezvous's own account only.
  std::shared_ptr<Whereabouts> whereabouts = nullptr;
};

/// what() of the exception in `error`, or a placeholder for a null pointer
/// or an exception not derived from std::exception.
std::string describe_exception(const std::exception_ptr& error);

namespace detail {

/// Formats replica ids as "[1, 3]".
std::string format_ids(const std::vector<int>& ids);

/// The failure of one registration: the first recorded cause wins.
///
/// Note [All-or-nothing rounds]: the master hands out a round's replies
/// inside commit(), under the same lock under which failures are recorded,
/// and a participant whose wait timed out records its Timeout only if its
/// reply has not been handed out (record_unless). So a failure lands either
/// before the replies, and the round fails for everyone, or after them, and
/// the round succeeds for everyone (a delivered value wins over a later
/// failure) while the failure fails the next round.
class RoundFailure {
 public:
  /// True once a cause was recorded (until clear()).
  bool failed() const noexcept { return failed_.load(); }

  /// Records `cause` unless a cause is already recorded; returns the recorded
  /// cause (the earlier one when there was one).
  std::exception_ptr record(std::exception_ptr cause);

  /// Records `cause` (unless one is recorded already) when `delivered()`,
  /// evaluated under the lock of commit(), is false; returns the recorded
  /// cause, or null when the value was delivered (then nothing is recorded).
  template <class Delivered>
  std::exception_ptr record_unless(std::exception_ptr cause, Delivered&& delivered) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (delivered()) return nullptr;
    if (!cause_) {
      cause_ = std::move(cause);
      failed_.store(true);
    }
    return cause_;
  }

  /// Runs `deliver` under the lock unless a cause is recorded; returns that
  /// cause, or null when `deliver` ran. `deliver` must not block or record.
  template <class Deliver>
  std::exception_ptr commit(Deliver&& deliver) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cause_) return cause_;
    deliver();
    return nullptr;
  }

  /// The recorded cause (null when none).
  std::exception_ptr cause() const;

  /// Throws, for a participant that arrives after the failure, an error of the
  /// cause's kind (Timeout or CommError) that names the cause.
  [[noreturn]] void throw_stale(const std::string& name) const;

  /// Forgets the cause.
  void clear();

 private:
  std::atomic<bool> failed_{false};
  mutable std::mutex mutex_;
  std::exception_ptr cause_;
};

/// State of one registration (one set of slaves), shared by the master and
/// every pipe so that a pipe outliving its master stays safe.
template <class Msg, class Reply>
struct Registration {
  struct Slot {
    Slot(int slave_id, const WaitPolicy& policy) : id(slave_id), message(policy), reply(policy) {}
    const int id;
    FutureResult<Msg> message;
    FutureResult<Reply> reply;
    /// Rounds this slave has entered; read by peers to name missing replicas.
    std::atomic<std::uint64_t> rounds{0};
    /// Set when the slave's pipe is destroyed: the registration cannot run again.
    std::atomic<bool> detached{false};
    /// True while the slave is inside run_slave (so an abort names its
    /// current round, not the next).
    std::atomic<bool> inside{false};
  };

  explicit Registration(SyncOptions opts) : options(std::move(opts)) {}

  /// Records `cause` as the registration's failure and wakes every waiter;
  /// returns the recorded cause (an earlier one wins).
  std::exception_ptr fail(std::exception_ptr cause) {
    std::exception_ptr recorded = failure.record(std::move(cause));
    fail_waiters(recorded);
    return recorded;
  }

  /// Wakes every waiter with `recorded` (a delivered value still wins).
  void fail_waiters(const std::exception_ptr& recorded) {
    for (auto& slot : slots) {
      slot->message.fail(recorded);
      slot->reply.fail(recorded);
    }
  }

  /// Replicas that have not entered round `round` yet; `include_master`
  /// considers replica 0 too.
  std::vector<int> missing(std::uint64_t round, bool include_master) const {
    std::vector<int> ids;
    if (include_master && master_rounds.load() < round) ids.push_back(0);
    for (const auto& slot : slots) {
      if (slot->rounds.load() < round) ids.push_back(slot->id);
    }
    return ids;
  }

  /// The wait policy for this registration's current number of participants.
  WaitPolicy wait_policy() const noexcept { return options.wait.for_participants(participants.load()); }

  /// The Timeout of `replica` in `round`, naming the replicas still missing.
  std::exception_ptr timeout_error(int replica, std::uint64_t round, bool include_master) const {
    const std::vector<int> ids = missing(round, include_master);
    std::string waiting = ids.empty() ? std::string("the master callback on replica 0 to return")
                                      : "replica(s) " + format_ids(ids);
    return std::make_exception_ptr(Timeout(
        options.name + ": round " + std::to_string(round) + " timed out after " +
        std::to_string(options.timeout.count()) + " ms on replica " + std::to_string(replica) +
        ", still waiting for " + waiting + (options.whereabouts ? options.whereabouts->disagreement() : std::string())));
  }

  /// Records a Timeout of the master in `round` and throws the recorded cause.
  [[noreturn]] void fail_timeout(int replica, std::uint64_t round, bool include_master) {
    std::rethrow_exception(fail(timeout_error(replica, round, include_master)));
  }

  /// For a slave whose wait for `reply` timed out in `round`: records its
  /// Timeout and wakes everyone, unless the master has handed out the reply
  /// meanwhile (Note [All-or-nothing rounds]); take the reply afterwards.
  void timeout_unless_delivered(int replica, std::uint64_t round, const FutureResult<Reply>& reply) {
    std::exception_ptr recorded = failure.record_unless(timeout_error(replica, round, /*include_master=*/true),
                                                        [&reply] { return reply.ready(); });
    if (recorded) fail_waiters(recorded);
  }

  /// Records an abort by `replica` and wakes everyone.
  void abort(int replica, std::uint64_t round, const std::string& reason) {
    fail(std::make_exception_ptr(CommError(options.name + ": round " + std::to_string(round) +
                                           " aborted by replica " + std::to_string(replica) + ": " +
                                           reason)));
  }

  const SyncOptions options;
  /// Slaves in increasing id order; filled during registration only.
  std::vector<std::unique_ptr<Slot>> slots;
  /// Rounds the master has entered.
  std::atomic<std::uint64_t> master_rounds{0};
  /// Master plus registered slaves (atomic: pipes read it while waiting).
  std::atomic<int> participants{1};
  /// Participants currently inside run_master / run_slave.
  std::atomic<int> inside{0};
  RoundFailure failure;
};

/// Counts a participant inside a round for the lifetime of the guard.
class InsideGuard {
 public:
  explicit InsideGuard(std::atomic<int>& counter) : counter_(counter) { counter_.fetch_add(1); }
  ~InsideGuard() { counter_.fetch_sub(1); }
  InsideGuard(const InsideGuard&) = delete;
  InsideGuard& operator=(const InsideGuard&) = delete;

 private:
  std::atomic<int>& counter_;
};

}  // namespace detail

/// A slave's end of a SyncMaster: sends this replica's message and receives
/// its reply. Move-only; one thread uses a pipe at a time.
template <class Msg, class Reply>
class SlavePipe {
 public:
  SlavePipe() = default;
  SlavePipe(SlavePipe&& other) noexcept { swap(other); }
  SlavePipe& operator=(SlavePipe&& other) noexcept {
    SlavePipe(std::move(other)).swap(*this);
    return *this;
  }
  SlavePipe(const SlavePipe&) = delete;
  SlavePipe& operator=(const SlavePipe&) = delete;

  /// Destroying a registered pipe fails its registration at once (the master
  /// would otherwise wait for a replica that no longer exists until timeout).
  ~SlavePipe() {
    if (registration_ == nullptr) return;
    slot_->detached.store(true);
    registration_->fail(std::make_exception_ptr(
        CommError(registration_->options.name + ": the pipe of replica " + std::to_string(slot_->id) +
                  " was destroyed, expected it to stay alive while its registration is in use; "
                  "re-register the slaves to continue")));
  }

  /// This slave's replica id (>= 1); 0 for an empty (moved-from) pipe.
  int id() const noexcept { return slot_ == nullptr ? 0 : slot_->id; }

  /// True when the pipe is registered (not default-constructed or moved-from).
  explicit operator bool() const noexcept { return registration_ != nullptr; }

  /// Sends `(id(), msg)` to the master and blocks until this slave's reply of
  /// the same round arrives.
  ///
  /// Throws CommError when the round fails (a peer aborted, the master
  /// callback threw, the pipe's registration was replaced or its master
  /// destroyed) and Timeout, naming the replicas still missing, when the
  /// round does not complete within the options' timeout.
  Reply run_slave(Msg msg) {
    SYNCBN_CHECK_T(CommError, registration_ != nullptr,
                   "SlavePipe::run_slave: the pipe is not registered, expected a pipe returned by "
                   "SyncMaster::register_slave");
    auto& reg = *registration_;
    detail::InsideGuard inside(reg.inside);
    if (reg.failure.failed()) reg.failure.throw_stale(reg.options.name);
    const std::uint64_t round = slot_->rounds.fetch_add(1) + 1;
    const WhereaboutsGuard where(reg.options.whereabouts.get(), slot_->id, reg.options.name, round);
    slot_->inside.store(true);
    struct Leave {
      std::atomic<bool>& flag;
      ~Leave() { flag.store(false); }
    } leave{slot_->inside};
    const auto deadline = deadline_after(reg.options.timeout);
    slot_->message.put(std::move(msg));
    if (!slot_->reply.wait_until(deadline, reg.wait_policy())) reg.timeout_unless_delivered(slot_->id, round, slot_->reply);
    return slot_->reply.take();  // the reply, or the round's failure
  }

  /// Fails the current round on behalf of this replica (the round it is in,
  /// or else its next one): every participant that waits in it, or arrives
  /// later, throws CommError naming this replica and `reason`. Thread-safe;
  /// does not block.
  void abort(const std::string& reason) {
    if (registration_ == nullptr) return;
    const std::uint64_t entered = slot_->rounds.load();
    registration_->abort(slot_->id, slot_->inside.load() ? entered : entered + 1, reason);
  }

  /// abort() with the message of a captured exception.
  void abort(const std::exception_ptr& error) { abort(describe_exception(error)); }

 private:
  template <class, class>
  friend class SyncMaster;
  using Registration = detail::Registration<Msg, Reply>;

  SlavePipe(std::shared_ptr<Registration> registration, typename Registration::Slot* slot)
      : registration_(std::move(registration)), slot_(slot) {}

  void swap(SlavePipe& other) noexcept {
    std::swap(registration_, other.registration_);
    std::swap(slot_, other.slot_);
  }

  std::shared_ptr<Registration> registration_;
  typename Registration::Slot* slot_ = nullptr;
};

/// The master's end: collects one message per replica each round, calls the
/// master callback once, and hands every replica its reply.
///
/// Replica ids: the master is 0, slaves are distinct ids >= 1. The callback
/// receives `(id, message)` pairs in increasing id order (master first),
/// whatever the arrival order, and must return exactly one `(id, reply)` per
/// participant with the master's first.
///
/// Registration: register_slave() adds slaves until the first round runs.
/// Registering after a round has run (or after a failure) starts a fresh
/// registration; pipes of the old one then fail with CommError.
///
/// Failures: an exception from the callback, an abort() by any participant, a
/// callback that returns a wrong set of ids, or a timeout fails the round for
/// everyone: each participant that waits in it, and each that arrives later,
/// throws (Timeout for a timeout, CommError otherwise). The registration then
/// stays failed until reset() (same slaves) or a new registration.
///
/// Thread safety: run_master is called by one thread at a time (the master
/// replica); abort may be called from any thread; register_slave, reset and
/// nr_slaves must not run while a round is in flight.
template <class Msg, class Reply>
class SyncMaster {
 public:
  using Message = Msg;
  using ReplyType = Reply;
  using Pipe = SlavePipe<Msg, Reply>;
  using Callback =
      std::function<std::vector<std::pair<int, Reply>>(std::vector<std::pair<int, Msg>>)>;

  /// Creates a master whose rounds call `callback` on the master's thread.
  explicit SyncMaster(Callback callback, SyncOptions options = {})
      : callback_(std::move(callback)), options_(std::move(options)),
        registration_(std::make_shared<Registration>(options_)) {
    SYNCBN_CHECK(static_cast<bool>(callback_), options_.name,
                 ": master callback is empty, expected a callable");
    SYNCBN_CHECK(options_.timeout.count() >= 0, options_.name, ": timeout is ", options_.timeout.count(),
                 " ms, expected >= 0 (0 waits forever)");
  }

  /// Fails the current registration so that waiting slaves wake with CommError.
  ~SyncMaster() {
    registration_->fail(std::make_exception_ptr(
        CommError(options_.name + ": the SyncMaster was destroyed while slaves were registered")));
  }

  SyncMaster(const SyncMaster&) = delete;
  SyncMaster& operator=(const SyncMaster&) = delete;

  /// Registers slave `id` (>= 1, unique) and returns its pipe. After a round
  /// has run, the first call starts a fresh registration.
  /// Throws InvalidArgument for id < 1 or an id already registered.
  Pipe register_slave(int id) {
    std::lock_guard<std::mutex> lock(mutex_);
    SYNCBN_CHECK(id >= 1, options_.name, ": register_slave: slave id is ", id, ", expected >= 1 (0 is the master)");
    if (activated_) {
      registration_->fail(std::make_exception_ptr(CommError(
          options_.name + ": this registration was replaced by a new one, expected pipes from "
                          "the latest register_slave calls")));
      registration_ = std::make_shared<Registration>(options_);
      activated_ = false;
    }
    auto& slots = registration_->slots;
    auto pos = std::lower_bound(slots.begin(), slots.end(), id,
                                [](const auto& slot, int key) { return slot->id < key; });
    SYNCBN_CHECK(pos == slots.end() || (*pos)->id != id, options_.name,
                 ": register_slave: slave id ", id, " is already registered, expected a new id");
    auto* slot = slots.insert(pos, std::make_unique<typename Registration::Slot>(id, options_.wait))->get();
    registration_->participants.store(static_cast<int>(slots.size()) + 1);
    return Pipe(registration_, slot);
  }

  /// Runs one round as the master with `msg` as replica 0's message: waits
  /// for every registered slave's message, calls the callback, delivers the
  /// replies and returns the master's reply. Blocks; throws as described in
  /// the class comment (an exception from the callback is rethrown as is).
  Reply run_master(Msg msg) {
    std::shared_ptr<Registration> reg;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      reg = registration_;
      activated_ = true;
    }
    BusyGuard busy(master_busy_, options_.name);
    detail::InsideGuard inside(reg->inside);
    if (reg->failure.failed()) reg->failure.throw_stale(options_.name);
    for (const auto& slot : reg->slots) {
      SYNCBN_CHECK_T(CommError, !slot->detached.load(), options_.name, ": the pipe of replica ",
                     slot->id, " was destroyed, expected re-registration");
    }
    const std::uint64_t round = reg->master_rounds.fetch_add(1) + 1;
    const WhereaboutsGuard where(options_.whereabouts.get(), 0, options_.name, round);
    const auto deadline = deadline_after(options_.timeout);

    std::vector<std::pair<int, Msg>> messages;
    messages.reserve(reg->slots.size() + 1);
    messages.emplace_back(0, std::move(msg));
    const WaitPolicy policy = reg->wait_policy();
    for (const auto& slot : reg->slots) {
      if (!slot->message.wait_until(deadline, policy)) reg->fail_timeout(0, round, /*include_master=*/false);
      messages.emplace_back(slot->id, slot->message.take());
    }
    // A peer may have aborted after posting its message: do not run the
    // callback (it may update state such as running statistics) for a round
    // that already failed.
    if (reg->failure.failed()) std::rethrow_exception(reg->failure.cause());

    std::vector<std::pair<int, Reply>> replies;
    try {
      replies = callback_(std::move(messages));
    } catch (...) {
      reg->fail(std::make_exception_ptr(CommError(options_.name + ": master callback failed in round " +
                                                  std::to_string(round) + " on replica 0: " +
                                                  describe_exception(std::current_exception()))));
      throw;
    }
    // Hand out the replies unless the round failed meanwhile (a slave timed
    // out, a peer aborted): all or nothing, Note [All-or-nothing rounds].
    const std::vector<std::size_t> order = reply_order(*reg, round, replies);
    const auto& slots = reg->slots;
    if (auto cause = reg->failure.commit([&] {
          for (std::size_t i = 0; i < slots.size(); ++i) slots[i]->reply.put(std::move(replies[order[i]].second));
        }))
      std::rethrow_exception(cause);
    return std::move(replies.front().second);
  }

  /// Fails the current round on behalf of the master (replica 0); see
  /// SlavePipe::abort. Thread-safe; does not block.
  void abort(const std::string& reason) { abort_for(0, reason); }

  /// Fails the current round on behalf of `replica` (e.g. a runtime that saw
  /// that replica fail outside the rendezvous): the error names `replica`.
  /// Throws InvalidArgument for a replica that is neither the master (0)
  /// nor a registered slave.
  void abort_for(int replica, const std::string& reason) {
    auto reg = current();
    const bool known = replica == 0 || std::any_of(reg->slots.begin(), reg->slots.end(),
                                                   [replica](const auto& slot) { return slot->id == replica; });
    SYNCBN_CHECK(known, options_.name, ": abort_for: replica ", replica,
                 " is not in this rendezvous, expected 0 (the master) or a registered slave id");
    // The master's round if it is in one, else its next.
    const std::uint64_t entered = reg->master_rounds.load();
    reg->abort(replica, master_busy_.load() ? entered : entered + 1, reason);
  }

  /// abort() with the message of a captured exception.
  void abort(const std::exception_ptr& error) { abort(describe_exception(error)); }

  /// Clears a failure and restarts round numbering with the same slaves.
  /// Throws CommError if a participant is still inside a round or a pipe of
  /// the registration was destroyed (re-register instead).
  void reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& reg = *registration_;
    const int inside = reg.inside.load();
    SYNCBN_CHECK_T(CommError, inside == 0, options_.name, ": reset: ", inside,
                   " participant(s) still inside a round, expected 0");
    for (auto& slot : reg.slots) {
      SYNCBN_CHECK_T(CommError, !slot->detached.load(), options_.name, ": reset: the pipe of replica ",
                     slot->id, " was destroyed, expected re-registration instead");
    }
    for (auto& slot : reg.slots) {
      slot->message.reset();
      slot->reply.reset();
      slot->rounds.store(0);
    }
    reg.master_rounds.store(0);
    reg.failure.clear();
  }

  /// Number of slaves in the current registration.
  int nr_slaves() const { return static_cast<int>(current()->slots.size()); }

  /// True when the current registration has failed and needs reset() or a
  /// new registration.
  bool failed() const { return current()->failure.failed(); }

  /// The options this master was created with.
  const SyncOptions& options() const noexcept { return options_; }

 private:
  using Registration = detail::Registration<Msg, Reply>;

  /// Marks run_master as running; a second concurrent caller gets CommError.
  class BusyGuard {
   public:
    BusyGuard(std::atomic<bool>& flag, const std::string& name) : flag_(flag) {
      SYNCBN_CHECK_T(CommError, !flag_.exchange(true), name,
                     ": run_master called while another run_master is in flight, expected one "
                     "master thread");
    }
    ~BusyGuard() { flag_.store(false); }
    BusyGuard(const BusyGuard&) = delete;
    BusyGuard& operator=(const BusyGuard&) = delete;

   private:
    std::atomic<bool>& flag_;
  };

  std::shared_ptr<Registration> current() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return registration_;
  }

  /// The index in `replies` of each slave's reply (in slot order), after
  /// checking that the callback returned the master's reply first and one
  /// reply per slave; a wrong set of ids fails the round.
  std::vector<std::size_t> reply_order(Registration& reg, std::uint64_t round,
                                       const std::vector<std::pair<int, Reply>>& replies) {
    const auto& slots = reg.slots;
    std::vector<std::size_t> order(slots.size());
    bool in_order = replies.size() == slots.size() + 1 && replies.front().first == 0;
    for (std::size_t i = 0; in_order && i < slots.size(); ++i) {
      in_order = replies[i + 1].first == slots[i]->id;
      order[i] = i + 1;
    }
    if (in_order) return order;
    // Slow path: slaves' replies in another order are fine; anything else is
    // a callback bug that must not reach the slaves as undefined behaviour.
    std::vector<int> got;
    for (const auto& reply : replies) got.push_back(reply.first);
    std::vector<int> sorted_tail(got.begin() + (got.empty() ? 0 : 1), got.end());
    std::sort(sorted_tail.begin(), sorted_tail.end());
    std::vector<int> expected_tail;
    for (const auto& slot : slots) expected_tail.push_back(slot->id);
    if (got.empty() || got.front() != 0 || sorted_tail != expected_tail) {
      std::vector<int> expected{0};
      expected.insert(expected.end(), expected_tail.begin(), expected_tail.end());
      auto cause = std::make_exception_ptr(CommError(
          options_.name + ": master callback returned replies for ids " + detail::format_ids(got) +
          " in round " + std::to_string(round) + ", expected " + detail::format_ids(expected) +
          " with the master's first"));
      std::rethrow_exception(reg.fail(std::move(cause)));
    }
    for (std::size_t i = 1; i < replies.size(); ++i) {
      auto pos = std::lower_bound(slots.begin(), slots.end(), replies[i].first,
                                  [](const auto& slot, int key) { return slot->id < key; });
      order[static_cast<std::size_t>(pos - slots.begin())] = i;
    }
    return order;
  }

  Callback callback_;
  const SyncOptions options_;
  mutable std::mutex mutex_;
  std::shared_ptr<Registration> registration_;
  bool activated_ = false;
  std::atomic<bool> master_busy_{false};
};

}  // namespace syncbn::sync
