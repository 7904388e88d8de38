// The runner of the distributed tests, started under mpirun: one MpiSession per
// process for every test case (support/mpi_world.hpp), Catch2 on every rank,
// and one exit code for the job: failed when any rank failed.
#include <cstdio>

#include "mpi_world.hpp"
#include "support/catch_runner.hpp"
#include "support/skip_code.hpp"
#include "syncbn/error.hpp"

namespace syncbn::testing {

distributed::MpiSession* g_mpi_session = nullptr;

}  // namespace syncbn::testing

int main(int argc, char** argv) {
  using namespace syncbn;
  if (!distributed::has_mpi()) {
    std::printf("skipped: this build of syncbn has no MPI (install libopenmpi-dev)\n");
    return testing::kSkipReturnCode;
  }
  distributed::MpiSession session;
  testing::g_mpi_session = &session;
  const int result = testing::run_catch(argc, argv);
  // Every rank learns whether any failed, so that mpirun's status is the job's.
  const double failed = result != 0 && result != testing::kSkipReturnCode ? 1.0 : 0.0;
  double failures = failed;
  try {
    failures = session.world()->all_reduce_sum(std::span(&failed, 1), "test result", std::chrono::seconds(60))[0];
  } catch (const Error& e) {
    std::fprintf(stderr, "rank %d: the ranks' results could not be combined: %s\n", session.world()->rank(), e.what());
    return 1;
  }
  testing::g_mpi_session = nullptr;
  return failures > 0 ? 1 : result;
}
