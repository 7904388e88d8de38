// syncbn::distributed in a build without MPI (SYNCBN_MPI=OFF or no MPI found):
// sessions throw Unsupported naming the package.

#include <cstdio>
#include <cstdlib>

#include "syncbn/distributed/mpi.hpp"
#include "syncbn/error.hpp"

namespace syncbn::distributed {

bool has_mpi() noexcept { return false; }

MpiSession::MpiSession() {
  SYNCBN_THROW(Unsupported, "MpiSession: this build of syncbn has no MPI, expected one (install Debian's "
                            "libopenmpi-dev and openmpi-bin, and reconfigure)");
}

MpiSession::~MpiSession() = default;

std::shared_ptr<comm::ProcessGroup> MpiSession::new_group(const std::vector<int>&, std::chrono::milliseconds) const {
  SYNCBN_THROW(Unsupported, "MpiSession::new_group: this build of syncbn has no MPI");
}

void abort_job(const std::string& message, int) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace syncbn::distributed
