#pragma once
// Choosing and rethrowing the failure of a multi-replica step.

#include <exception>
#include <string>
#include <vector>

#include "syncbn/core/device.hpp"

namespace syncbn::parallel::detail {

/// The index of the failure to report: the first replica whose error is not
/// a CommError (the root cause; the others were released because of it), or
/// the first error of all; -1 when there is none.
int root_failure(const std::vector<std::exception_ptr>& errors);

/// Rethrows `error` with `prefix` in front of its message, as the same
/// syncbn error type (std::exception and others become syncbn::Error).
[[noreturn]] void rethrow_with_context(const std::exception_ptr& error, const std::string& prefix);

}  // namespace syncbn::parallel::detail
