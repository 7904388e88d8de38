# Compile flags for syncbn's own targets: warnings (-Wall -Wextra clean is a
# release gate), -fno-math-errno, which lets GCC vectorize sqrt in the
# statistics loops (syncbn never reads errno after a math call), and, with
# SYNCBN_NATIVE_ARCH (off by default: not portable), -march=native.
include(CheckCXXCompilerFlag)
check_cxx_compiler_flag(-march=native SYNCBN_HAS_MARCH_NATIVE)

function(syncbn_target_warnings target)
  set(flags -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor)
  if(SYNCBN_NATIVE_ARCH AND SYNCBN_HAS_MARCH_NATIVE)
    list(APPEND flags -march=native)
  endif()
  if(SYNCBN_WERROR)
    list(APPEND flags -Werror)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${flags} -fno-math-errno>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
endfunction()
