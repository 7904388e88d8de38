#pragma once
// How a syncbn waiter spends the time between "not ready yet" and "block".

#include <chrono>

namespace syncbn::sync {

/// The clock every syncbn deadline is measured on.
using Clock = std::chrono::steady_clock;

/// Budget of a wait before it blocks on a condition variable.
///
/// A wait first polls with a CPU pause for `spin`, then polls while giving its
/// core away (std::this_thread::yield) until `spin + yield` has passed since it
/// started, then blocks until notified or until its deadline. Spinning wins
/// when every participant has a core; yielding keeps rounds fast when threads
/// outnumber cores (a spinning waiter would steal the core of the thread it
/// waits for); blocking guarantees that nobody burns a core while a peer is
/// busy for long. See Note [Adaptive wait] in docs/design.md.
struct WaitPolicy {
  /// Busy-poll budget with a CPU pause between polls.
  std::chrono::nanoseconds spin{std::chrono::microseconds{5}};
  /// Poll-and-yield budget after the spin phase.
  std::chrono::nanoseconds yield{std::chrono::microseconds{200}};
  /// Drop the spin phase when the participants of a rendezvous outnumber the
  /// cores (see for_participants).
  bool adapt_to_cores = true;

  /// A policy that blocks at once (a plain mutex + condition variable wait).
  static constexpr WaitPolicy blocking() noexcept { return WaitPolicy{{}, {}, false}; }

  /// This policy for a rendezvous of `participants` threads: when
  /// adapt_to_cores is set and they outnumber the cores this process may run
  /// on, without the spin phase, since a spinning waiter then holds the core
  /// that the thread it waits for needs (measured: 18 us instead of 6.5 us
  /// per round for 4 threads on 2 cores).
  WaitPolicy for_participants(int participants) const noexcept;
};

/// Number of CPUs this process may run on (its affinity mask), at least 1.
int available_cores() noexcept;

/// The deadline `timeout` from now; a zero or negative timeout means "wait
/// forever" and yields Clock::time_point::max(), and so does a timeout too
/// long for the clock (such as std::chrono::milliseconds::max()).
template <class Rep, class Period>
Clock::time_point deadline_after(std::chrono::duration<Rep, Period> timeout) noexcept {
  if (timeout <= timeout.zero()) return Clock::time_point::max();
  const Clock::time_point now = Clock::now();
  // Compare in the timeout's own unit: converting a huge timeout to the
  // clock's would overflow.
  const auto room = std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(Clock::time_point::max() - now);
  if (timeout >= room) return Clock::time_point::max();
  return now + std::chrono::duration_cast<Clock::duration>(timeout);
}

}  // namespace syncbn::sync
