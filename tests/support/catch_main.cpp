// The one translation unit that compiles Catch2's runner for the CPU test
// binaries; a run whose test cases all skipped exits with the skip code
// (support/skip.hpp).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "support/skip_runner.hpp"

int main(int argc, char** argv) {
  return syncbn::testing::exit_code_with_skips(Catch::Session().run(argc, argv));
}
