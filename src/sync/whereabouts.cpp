// Whereabouts: Note [Where the replicas wait] in whereabouts.hpp.

#include "syncbn/sync/whereabouts.hpp"

#include <algorithm>

namespace syncbn::sync {

Whereabouts::Whereabouts(int replicas) : places_(static_cast<std::size_t>(std::max(replicas, 0))) {}

void Whereabouts::enter(int replica, const std::string& name, std::uint64_t round) {
  const std::lock_guard lock(mutex_);
  if (replica < 0 || static_cast<std::size_t>(replica) >= places_.size()) return;
  Place& place = places_[static_cast<std::size_t>(replica)];
  place.name = name;
  place.round = round;
  place.failed = false;
}

void Whereabouts::leave(int replica) noexcept {
  const std::lock_guard lock(mutex_);
  if (replica < 0 || static_cast<std::size_t>(replica) >= places_.size()) return;
  places_[static_cast<std::size_t>(replica)] = Place{};
}

void Whereabouts::leave_on_failure(int replica) noexcept {
  const std::lock_guard lock(mutex_);
  if (replica < 0 || static_cast<std::size_t>(replica) >= places_.size()) return;
  places_[static_cast<std::size_t>(replica)].failed = true;
}

void Whereabouts::clear() noexcept {
  const std::lock_guard lock(mutex_);
  for (Place& p : places_) p = Place{};
}

std::string Whereabouts::disagreement() const {
  const std::lock_guard lock(mutex_);
  const bool same = std::all_of(places_.begin(), places_.end(), [&](const Place& p) {
    return p.name == places_.front().name && p.round == places_.front().round;
  });
  if (places_.empty() || same) return {};
  std::string out = "; where the replicas are:";
  for (std::size_t r = 0; r < places_.size(); ++r) {
    out += (r == 0 ? " replica " : ", replica ") + std::to_string(r);
    const Place& p = places_[r];
    out += p.name.empty() ? std::string(" is in no rendezvous")
                          : (p.failed ? " failed in '" : " waits in '") + p.name + "' round " + std::to_string(p.round);
  }
  return out;
}

}  // namespace syncbn::sync
