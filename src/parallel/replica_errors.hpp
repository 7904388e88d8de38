#pragma once
// Choosing and rethrowing the failure of a multi-replica step.

#include <exception>
#include <string>
#include <vector>

#include "syncbn/core/device.hpp"

namespace syncbn::parallel::detail {

/// The index of the failure to report (the root cause; the others were
/// released because of it): an error that is not a CommError (a layer's own
/// error) before a Timeout (a replica that did not arrive) before any other
/// CommError (a replica released by an abort, a failed callback); among
/// layers' own errors the lowest replica's (each is genuine, and the same
/// input then always gives the same report), among communication errors
/// the one that happened first (`order[i]`: the rank in time of replica i's
/// failure). -1 when there is none.
int root_failure(const std::vector<std::exception_ptr>& errors, const std::vector<int>& order);

/// Rethrows `error` with `prefix` in front of its message, as the same
/// syncbn error type (std::exception and others become syncbn::Error).
[[noreturn]] void rethrow_with_context(const std::exception_ptr& error, const std::string& prefix);

}  // namespace syncbn::parallel::detail
