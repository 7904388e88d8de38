// Catch2's implementation and the runners of support/catch_runner.hpp.
#define CATCH_CONFIG_RUNNER
#include "support/catch_runner.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "support/device_under_test.hpp"
#include "support/skip_code.hpp"
#include "support/skip_runner.hpp"
#include "syncbn/core/cuda.hpp"

namespace syncbn::testing {

int run_catch(int argc, char** argv) { return exit_code_with_skips(Catch::Session().run(argc, argv)); }

int run_test_area(int argc, char** argv) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  const auto& config = session.configData();
  const bool listing = config.listTests || config.listTestNamesOnly || config.listTags || config.listReporters ||
                       config.showHelp;
  if (listing) return session.run();
  if (const std::string kind = test_device_kind(); kind != "cpu" && kind != "cuda") {
    std::fprintf(stderr, "SYNCBN_TEST_DEVICE: '%s' is not a device kind, expected cpu or cuda\n", kind.c_str());
    return 2;
  }
  if (test_on_cuda() && cuda::device_count() == 0) {
    std::printf("syncbn CUDA tests: no CUDA device is available, skipping\n");
    return kSkipReturnCode;
  }
  return exit_code_with_skips(session.run());
}

}  // namespace syncbn::testing
