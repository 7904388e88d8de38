#pragma once
// Skipping a test case that cannot run on this machine (an optional tool or
// data set is missing). Catch2 v2 has no skip of its own: SYNCBN_SKIP prints
// the reason as a warning, records the skip and returns from the test case.
// The test runners (support/skip_runner.hpp) exit with kSkipReturnCode when
// every test case they ran skipped, which CTest reports as "Skipped" (the
// test areas set SKIP_RETURN_CODE), never as "Passed".

#include <catch2/catch.hpp>

#include "support/skip_code.hpp"

namespace syncbn::testing {

/// What the runner needs to tell a skipped run from a passed one.
struct SkipRecord {
  int skips_in_case = 0;  // SYNCBN_SKIP calls in the running test case
  int cases = 0;          // test cases that ended
  int skipped_cases = 0;  // of which skipped
};

inline SkipRecord& skip_record() {
  static SkipRecord record;
  return record;
}

}  // namespace syncbn::testing

/// Skips the rest of the running test case; `message` is streamed
/// ("no torch in " << python). Use it only in the test case's own body.
#define SYNCBN_SKIP(message)                             \
  do {                                                   \
    WARN("skipped: " << message);                        \
    ++::syncbn::testing::skip_record().skips_in_case;    \
    return;                                              \
  } while (false)
