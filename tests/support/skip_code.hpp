#pragma once

namespace syncbn::testing {

/// Exit code of a test binary that skipped its tests (CTest SKIP_RETURN_CODE).
inline constexpr int kSkipReturnCode = 77;

}  // namespace syncbn::testing
