#pragma once
// The part of the test runners (support/catch_runner.cpp) that turns skipped
// test cases into CTest's skip code. Include it in one translation unit per
// test binary: it registers a Catch2 listener.

#include <catch2/catch.hpp>

#include "support/skip.hpp"

namespace syncbn::testing {

/// Counts the test cases that end and those that SYNCBN_SKIP skipped.
class SkipListener : public Catch::TestEventListenerBase {
 public:
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    skip_record().skips_in_case = 0;
    TestEventListenerBase::testCaseStarting(info);
  }
  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    auto& record = skip_record();
    ++record.cases;
    if (record.skips_in_case > 0) ++record.skipped_cases;
    TestEventListenerBase::testCaseEnded(stats);
  }
};

/// The exit code of a run whose Catch2 result is `result`: the skip code
/// when it passed and every test case it ran was skipped (how CTest runs one
/// test case per process); never the skip code for a failure, even one that
/// counts exactly kSkipReturnCode failed assertions.
inline int exit_code_with_skips(int result) {
  const auto& record = skip_record();
  if (result == 0) return record.cases > 0 && record.skipped_cases == record.cases ? kSkipReturnCode : 0;
  return result == kSkipReturnCode ? 1 : result;
}

CATCH_REGISTER_LISTENER(SkipListener)

}  // namespace syncbn::testing
