// Runner of the CUDA test binary: where no GPU exists it exits with the skip
// code that CTest reports as "Skipped" (never as passed), as does a test case
// that skips itself (support/skip.hpp). Listing the tests (what CTest's
// discovery does at build time) works everywhere.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "support/skip_code.hpp"
#include "support/skip_runner.hpp"
#include "syncbn/core/cuda.hpp"

int main(int argc, char** argv) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  const auto& config = session.configData();
  const bool listing = config.listTests || config.listTestNamesOnly || config.listTags || config.listReporters ||
                       config.showHelp;
  if (!listing && syncbn::cuda::device_count() == 0) {
    std::printf("syncbn CUDA tests: no CUDA device is available, skipping\n");
    return syncbn::testing::kSkipReturnCode;
  }
  return syncbn::testing::exit_code_with_skips(session.run());
}
