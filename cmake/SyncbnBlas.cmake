# The CBLAS that the CPU convolutions call (Note [Convolution on the CPU] in
# src/core/cpu/conv_im2col.cpp). SYNCBN_BLAS: AUTO (use one where found), ON
# (require one) or OFF. Prefers OpenBLAS (Debian: libopenblas-dev), then any
# BLAS that CMake's FindBLAS knows and whose cblas.h is found.
#
# Sets SYNCBN_WITH_BLAS and, when ON, the imported target syncbn::blas.
set(SYNCBN_BLAS "AUTO" CACHE STRING "CPU convolutions through a CBLAS: AUTO (where found), ON or OFF")
set_property(CACHE SYNCBN_BLAS PROPERTY STRINGS AUTO ON OFF)
if(NOT SYNCBN_BLAS MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "SYNCBN_BLAS: expected AUTO, ON or OFF, got '${SYNCBN_BLAS}'")
endif()

set(SYNCBN_WITH_BLAS OFF)
if(NOT SYNCBN_BLAS STREQUAL "OFF")
  set(BLA_VENDOR OpenBLAS)
  find_package(BLAS QUIET)
  if(NOT BLAS_FOUND)
    unset(BLA_VENDOR)
    find_package(BLAS QUIET)
  endif()
  find_path(SYNCBN_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas)
  if(BLAS_FOUND AND SYNCBN_CBLAS_INCLUDE_DIR)
    add_library(syncbn::blas INTERFACE IMPORTED GLOBAL)
    target_include_directories(syncbn::blas INTERFACE "${SYNCBN_CBLAS_INCLUDE_DIR}")
    target_link_libraries(syncbn::blas INTERFACE ${BLAS_LIBRARIES})
    set(SYNCBN_WITH_BLAS ON)
    list(GET BLAS_LIBRARIES 0 first_blas)
    message(STATUS "syncbn: CPU convolutions through ${first_blas}")
  elseif(SYNCBN_BLAS STREQUAL "ON")
    message(FATAL_ERROR "SYNCBN_BLAS=ON but no BLAS with cblas.h was found (install libopenblas-dev)")
  else()
    message(STATUS "syncbn: no BLAS found: CPU convolutions throw Unsupported (install libopenblas-dev)")
  endif()
endif()
