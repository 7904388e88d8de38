# Compile flags for syncbn's own targets: warnings (-Wall -Wextra clean is a
# release gate) and -fno-math-errno, which lets GCC vectorize sqrt in the
# statistics loops (syncbn never reads errno after a math call).
#
# syncbn_library_flags adds, with SYNCBN_NATIVE_ARCH (off by default: not
# portable), -march=native to the library's own code. Tests, examples and
# benchmarks keep the default flags either way, so that a native build and a
# default one differ in the library only (scripts/bench_portable.sh compares
# the two).
include(CheckCXXCompilerFlag)
check_cxx_compiler_flag(-march=native SYNCBN_HAS_MARCH_NATIVE)

function(syncbn_target_warnings target)
  set(flags -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor)
  if(SYNCBN_WERROR)
    list(APPEND flags -Werror)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${flags} -fno-math-errno>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
endfunction()

function(syncbn_library_flags target)
  if(SYNCBN_NATIVE_ARCH)
    if(NOT SYNCBN_HAS_MARCH_NATIVE)
      message(FATAL_ERROR "SYNCBN_NATIVE_ARCH=ON, but ${CMAKE_CXX_COMPILER_ID} does not take -march=native")
    endif()
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  endif()
endfunction()
