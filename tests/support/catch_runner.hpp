#pragma once
// The test binaries' runners. Catch2's implementation is compiled once per
// build, in support/catch_runner.cpp (the heaviest file of the test suite to
// compile), and linked into every test binary; each binary's main() is a
// few lines: support/catch_main.cpp for the test areas, tests/distributed/mpi_main.cpp
// for the MPI tests.

namespace syncbn::testing {

/// Runs the test cases the command line selects and returns the exit code,
/// the skip code when every case it ran skipped (support/skip.hpp).
int run_catch(int argc, char** argv);

/// run_catch for a test area's binary: a run on the CUDA backend
/// (SYNCBN_TEST_DEVICE=cuda, support/device_under_test.hpp) where no GPU
/// exists exits with the skip code, so that CTest reports every case as
/// skipped, never as passed; listing the tests (what CTest's discovery does
/// at build time) works everywhere.
int run_test_area(int argc, char** argv);

}  // namespace syncbn::testing
