#pragma once
// The MPI session of a distributed test process (tests/distributed/mpi_main.cpp).

#include "syncbn/distributed/mpi.hpp"

namespace syncbn::testing {

extern distributed::MpiSession* g_mpi_session;

/// The session the runner opened for this process.
inline distributed::MpiSession& mpi_session() { return *g_mpi_session; }

}  // namespace syncbn::testing
