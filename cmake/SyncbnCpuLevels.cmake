# The CPU kernel levels to build (Note [CPU dispatch] in src/core/cpu/isa.hpp).
#
# Sets SYNCBN_CPU_LEVELS_BUILT (lowest first) and, per level, the compile
# flags SYNCBN_CPU_FLAGS_<level>. A level is built when the compiler takes
# its flags and a probe compiled with them (cmake/probes/vector_constants.cpp,
# at -O2 and -O3) runs correctly on this machine. Where the probe fails, the
# level's documented workaround is probed next and, if it passes, the level is
# built with it: GCC 12's SLP vectorizer turns constant vectors into garbage
# under -mavx512f, and -fno-tree-slp-vectorize avoids that, so a GCC 12 build
# has avx512 with that flag (the test suite then runs at that level too). A
# level this machine cannot run cannot be probed and is not built.
# SYNCBN_NATIVE_ARCH builds the one level "native" (-march=native).

include_guard(GLOBAL)

set(SYNCBN_CPU_LEVELS "baseline;avx2;avx512" CACHE STRING
    "CPU kernel levels to build where the compiler passes their probe (baseline is always built)")

set(SYNCBN_CPU_FLAGS_baseline "")
set(SYNCBN_CPU_FLAGS_avx2 -march=x86-64-v3)
set(SYNCBN_CPU_FLAGS_avx512 -march=x86-64-v4)
set(SYNCBN_CPU_FLAGS_native "")
# What to add when a level's flags fail the probe (known compiler bugs).
set(SYNCBN_CPU_WORKAROUND_avx512 -fno-tree-slp-vectorize)

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

# Sets <out> to "ok" when code compiled with `flags` at -O2 and -O3 passes the
# probe here, else to the reason it does not.
function(syncbn_probe_cpu_flags out tag flags)
  foreach(opt IN ITEMS -O2 -O3)
    try_run(run_rc compile_ok "${PROJECT_BINARY_DIR}/cpu_probes/${tag}${opt}"
            "${PROJECT_SOURCE_DIR}/cmake/probes/vector_constants.cpp"
            COMPILE_DEFINITIONS -std=c++20 ${opt} ${flags}
            RUN_OUTPUT_VARIABLE run_log COMPILE_OUTPUT_VARIABLE compile_log)
    list(JOIN flags " " flag_string)
    if(NOT compile_ok)
      set(${out} "${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION} does not take ${flag_string}" PARENT_SCOPE)
      return()
    elseif(NOT run_rc EQUAL 0)
      string(STRIP "${run_log}" run_log)
      set(${out} "the compiler miscompiles constant vectors with ${flag_string} ${opt} (${run_log})" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} ok PARENT_SCOPE)
endfunction()

foreach(level IN ITEMS avx2 avx512)
  if(NOT level IN_LIST SYNCBN_CPU_LEVELS)
    message(STATUS "syncbn: CPU level ${level} not built: not in SYNCBN_CPU_LEVELS (${SYNCBN_CPU_LEVELS})")
    continue()
  endif()
  if(NOT level IN_LIST SYNCBN_CPU_RUNNABLE)
    message(STATUS "syncbn: CPU level ${level} not built: this machine cannot run its code, so the compiler's "
                   "output for it cannot be checked")
    continue()
  endif()
  # The verdict is cached per build tree: "ok", "workaround" or the reason.
  set(probe_var "SYNCBN_CPU_VERDICT_${level}")
  if(NOT DEFINED ${probe_var})
    syncbn_probe_cpu_flags(verdict ${level} "${SYNCBN_CPU_FLAGS_${level}}")
    if(NOT verdict STREQUAL "ok" AND DEFINED SYNCBN_CPU_WORKAROUND_${level})
      syncbn_probe_cpu_flags(second ${level}-workaround "${SYNCBN_CPU_FLAGS_${level}};${SYNCBN_CPU_WORKAROUND_${level}}")
      if(second STREQUAL "ok")
        set(verdict "workaround|${verdict}")
      endif()
    endif()
    set(${probe_var} "${verdict}" CACHE INTERNAL "Verdict of the ${level} compiler probe")
  endif()
  if(${probe_var} STREQUAL "ok")
    list(APPEND SYNCBN_CPU_LEVELS_BUILT ${level})
  elseif(${probe_var} MATCHES "^workaround\\|(.*)$")
    list(APPEND SYNCBN_CPU_FLAGS_${level} ${SYNCBN_CPU_WORKAROUND_${level}})
    list(APPEND SYNCBN_CPU_LEVELS_BUILT ${level})
    list(JOIN SYNCBN_CPU_WORKAROUND_${level} " " workaround)
    message(STATUS "syncbn: CPU level ${level} built with ${workaround}: ${CMAKE_MATCH_1}, and not with it")
  else()
    message(STATUS "syncbn: CPU level ${level} not built: ${${probe_var}}")
  endif()
endforeach()
message(STATUS "syncbn: CPU kernel levels: ${SYNCBN_CPU_LEVELS_BUILT}")
