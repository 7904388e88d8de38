#pragma once
// The MPI session of a dist test process (tests/dist/mpi_main.cpp).

#include "syncbn/dist/mpi.hpp"

namespace syncbn::testing {

extern dist::MpiSession* g_mpi_session;

/// The session the runner opened for this process.
inline dist::MpiSession& mpi_session() { return *g_mpi_session; }

}  // namespace syncbn::testing
