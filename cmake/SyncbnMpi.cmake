# The MPI backend of syncbn::distributed (process groups across processes and
# nodes). SYNCBN_MPI: AUTO (use MPI where found), ON (require it) or OFF.
# Debian: libopenmpi-dev (and openmpi-bin for mpirun).
#
# Sets SYNCBN_WITH_MPI; when ON, MPI::MPI_CXX exists and MPIEXEC_EXECUTABLE
# names the launcher the tests run under.
set(SYNCBN_MPI "AUTO" CACHE STRING "Process groups over MPI: AUTO (where found), ON or OFF")
set_property(CACHE SYNCBN_MPI PROPERTY STRINGS AUTO ON OFF)
if(NOT SYNCBN_MPI MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "SYNCBN_MPI: expected AUTO, ON or OFF, got '${SYNCBN_MPI}'")
endif()

set(SYNCBN_WITH_MPI OFF)
if(NOT SYNCBN_MPI STREQUAL "OFF")
  # The C API from C++ (the project enables no C compiler), without the
  # deprecated C++ bindings.
  set(MPI_CXX_SKIP_MPICXX ON)
  find_package(MPI QUIET COMPONENTS CXX)
  if(MPI_CXX_FOUND)
    set(SYNCBN_WITH_MPI ON)
    message(STATUS "syncbn: process groups over MPI ${MPI_CXX_VERSION} (${MPIEXEC_EXECUTABLE})")
  elseif(SYNCBN_MPI STREQUAL "ON")
    message(FATAL_ERROR "SYNCBN_MPI=ON but no MPI was found (install libopenmpi-dev and openmpi-bin)")
  else()
    message(STATUS "syncbn: no MPI found: distributed's MPI process groups throw Unsupported (install libopenmpi-dev)")
  endif()
endif()
