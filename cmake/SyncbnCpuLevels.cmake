# The CPU kernel levels to build (Note [CPU dispatch] in src/core/cpu/isa.hpp).
#
# Sets SYNCBN_CPU_LEVELS_BUILT (lowest first) and, per level, the compile
# flags SYNCBN_CPU_FLAGS_<level>. A level is built when the compiler takes
# its flags and a probe compiled with them (cmake/probes/vector_constants.cpp,
# at -O2 and -O3) runs correctly on this machine; GCC 12 fails it for
# avx512. A level this machine cannot run cannot be probed and is not built.
# SYNCBN_NATIVE_ARCH builds the one level "native" (-march=native everywhere).

include_guard(GLOBAL)
include(CheckCXXCompilerFlag)

set(SYNCBN_CPU_LEVELS "baseline;avx2;avx512" CACHE STRING
    "CPU kernel levels to build where the compiler passes their probe (baseline is always built)")

set(SYNCBN_CPU_FLAGS_baseline "")
set(SYNCBN_CPU_FLAGS_avx2 -march=x86-64-v3)
set(SYNCBN_CPU_FLAGS_avx512 -march=x86-64-v4)
set(SYNCBN_CPU_FLAGS_native "")

if(SYNCBN_NATIVE_ARCH)
  set(SYNCBN_CPU_LEVELS_BUILT native)
  message(STATUS "syncbn: CPU kernels for this machine only (SYNCBN_NATIVE_ARCH, -march=native)")
  return()
endif()

set(SYNCBN_CPU_LEVELS_BUILT baseline)
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  message(STATUS "syncbn: CPU kernels: baseline (levels exist for x86-64 only)")
  return()
endif()

# Which levels this machine runs, with the library's own detection.
if(NOT DEFINED SYNCBN_CPU_RUNNABLE)
  try_run(run_rc compile_ok "${PROJECT_BINARY_DIR}/cpu_probes/levels" "${PROJECT_SOURCE_DIR}/cmake/probes/cpu_levels.cpp"
          CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${PROJECT_SOURCE_DIR}/src/core"
          COMPILE_DEFINITIONS -std=c++20
          RUN_OUTPUT_VARIABLE levels COMPILE_OUTPUT_VARIABLE compile_log)
  if(NOT compile_ok OR NOT run_rc EQUAL 0)
    message(FATAL_ERROR "syncbn: the CPU-level probe failed to build or run:\n${compile_log}")
  endif()
  string(STRIP "${levels}" levels)
  set(SYNCBN_CPU_RUNNABLE "${levels}" CACHE INTERNAL "CPU levels this build machine runs")
endif()

foreach(level IN ITEMS avx2 avx512)
  if(NOT level IN_LIST SYNCBN_CPU_LEVELS)
    continue()
  endif()
  set(flags ${SYNCBN_CPU_FLAGS_${level}})
  string(MAKE_C_IDENTIFIER "SYNCBN_CPU_FLAG_OK_${level}" flag_var)
  check_cxx_compiler_flag("${flags}" ${flag_var})
  if(NOT ${flag_var})
    message(STATUS "syncbn: CPU level ${level} not built: ${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION} does not take ${flags}")
    continue()
  endif()
  if(NOT level IN_LIST SYNCBN_CPU_RUNNABLE)
    message(STATUS "syncbn: CPU level ${level} not built: this machine cannot run its code, so the compiler's "
                   "output for it cannot be checked")
    continue()
  endif()
  set(probe_var "SYNCBN_CPU_PROBE_${level}")
  if(NOT DEFINED ${probe_var})
    set(verdict ok)
    foreach(opt IN ITEMS -O2 -O3)
      try_run(run_rc compile_ok "${PROJECT_BINARY_DIR}/cpu_probes/${level}${opt}"
              "${PROJECT_SOURCE_DIR}/cmake/probes/vector_constants.cpp"
              COMPILE_DEFINITIONS -std=c++20 ${opt} ${flags}
              RUN_OUTPUT_VARIABLE run_log COMPILE_OUTPUT_VARIABLE compile_log)
      if(NOT compile_ok)
        set(verdict "the probe did not compile with ${flags} ${opt}")
        break()
      elseif(NOT run_rc EQUAL 0)
        string(STRIP "${run_log}" run_log)
        set(verdict "the compiler miscompiles constant vectors with ${flags} ${opt} (${run_log})")
        break()
      endif()
    endforeach()
    set(${probe_var} "${verdict}" CACHE INTERNAL "Verdict of the ${level} compiler probe")
  endif()
  if(${probe_var} STREQUAL "ok")
    list(APPEND SYNCBN_CPU_LEVELS_BUILT ${level})
  else()
    message(STATUS "syncbn: CPU level ${level} not built: ${${probe_var}}")
  endif()
endforeach()
message(STATUS "syncbn: CPU kernel levels: ${SYNCBN_CPU_LEVELS_BUILT}")
