# oneDNN, the second engine of the CPU convolutions (Note [Convolutions on
# oneDNN] in src/core/cpu/conv_onednn.cpp). SYNCBN_DNNL: AUTO (use it where
# found), ON (require it) or OFF. Debian: libdnnl-dev (2.6, the version
# Debian's PyTorch uses), whose CMake package is `dnnl` and whose library
# runs its threads on GNU OpenMP (libgomp).
#
# Sets SYNCBN_WITH_DNNL and, when ON, SYNCBN_OPENMP_RUNTIME: the OpenMP
# runtime oneDNN runs on, whose per-thread setting syncbn calls
# (omp_set_num_threads). It is linked as a plain library rather than with
# -fopenmp, so that a Clang build (the sanitizers') calls the same runtime
# as oneDNN instead of LLVM's.
set(SYNCBN_DNNL "AUTO" CACHE STRING "CPU convolutions on oneDNN too: AUTO (where found), ON or OFF")
set_property(CACHE SYNCBN_DNNL PROPERTY STRINGS AUTO ON OFF)
if(NOT SYNCBN_DNNL MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "SYNCBN_DNNL: expected AUTO, ON or OFF, got '${SYNCBN_DNNL}'")
endif()

set(SYNCBN_WITH_DNNL OFF)
if(NOT SYNCBN_DNNL STREQUAL "OFF")
  # Debian's oneDNN package is built with an OpenCL GPU runtime: its CMake
  # package fails the whole configure unless OpenCL's development files are
  # there (ocl-icd-opencl-dev, a recommendation of libdnnl-dev that an
  # install without recommendations leaves out). Ask for OpenCL first, so
  # that AUTO can go on without oneDNN and ON can say what to install.
  find_file(SYNCBN_DNNL_CONFIG NAMES dnnl-config.cmake PATH_SUFFIXES lib/cmake/dnnl lib/${CMAKE_LIBRARY_ARCHITECTURE}/cmake/dnnl)
  set(syncbn_dnnl_wants_opencl OFF)
  if(SYNCBN_DNNL_CONFIG)
    file(STRINGS "${SYNCBN_DNNL_CONFIG}" syncbn_dnnl_gpu_runtime REGEX "set\\(DNNL_GPU_RUNTIME \"OCL\"\\)")
    if(syncbn_dnnl_gpu_runtime)
      find_package(OpenCL QUIET)
      if(NOT OpenCL_FOUND)
        set(syncbn_dnnl_wants_opencl ON)
      endif()
    endif()
  endif()
  if(syncbn_dnnl_wants_opencl)
    set(dnnl_FOUND FALSE)
    set(syncbn_dnnl_missing " (its CMake package, ${SYNCBN_DNNL_CONFIG}, needs OpenCL: install ocl-icd-opencl-dev)")
  else()
    find_package(dnnl CONFIG QUIET)
    set(syncbn_dnnl_missing " (install libdnnl-dev)")
  endif()
  find_library(SYNCBN_OPENMP_RUNTIME NAMES libgomp.so.1 gomp)
  if(dnnl_FOUND AND SYNCBN_OPENMP_RUNTIME)
    set(SYNCBN_WITH_DNNL ON)
    message(STATUS "syncbn: CPU convolutions on oneDNN ${dnnl_VERSION} too (chosen per layer shape and stage)")
  elseif(SYNCBN_DNNL STREQUAL "ON")
    message(FATAL_ERROR "SYNCBN_DNNL=ON but oneDNN (and GNU OpenMP) was not found${syncbn_dnnl_missing}")
  else()
    message(STATUS "syncbn: no oneDNN found: CPU convolutions on im2col + the BLAS only${syncbn_dnnl_missing}")
  endif()
endif()
