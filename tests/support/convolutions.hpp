#pragma once
// Why the device under test cannot run convolutions, or "" when it can: a
// CPU build without a BLAS (SYNCBN_BLAS) throws Unsupported for them, and
// their tests skip with this reason.

#include <string>

#include "support/device_under_test.hpp"
#include "syncbn/core/cpu.hpp"

namespace syncbn::testing {

inline std::string convolutions_unavailable() {
  if (!test_on_cuda() && !cpu::has_blas())
    return "this build has no BLAS for CPU convolutions (install libopenblas-dev and reconfigure)";
  return "";
}

}  // namespace syncbn::testing
