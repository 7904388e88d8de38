// Core counting for the adaptive wait policy.

#include "syncbn/sync/wait_policy.hpp"

#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace syncbn::sync {

int available_cores() noexcept {
  // The affinity mask is what matters under taskset, cgroups and containers;
  // it cannot change under us in a way worth re-reading every wait.
  static const int cores = [] {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      const int n = CPU_COUNT(&set);
      if (n > 0) return n;
    }
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
  }();
  return cores;
}

WaitPolicy WaitPolicy::for_participants(int participants) const noexcept {
  WaitPolicy out = *this;
  if (adapt_to_cores && participants > available_cores()) out.spin = std::chrono::nanoseconds::zero();
  return out;
}

}  // namespace syncbn::sync
