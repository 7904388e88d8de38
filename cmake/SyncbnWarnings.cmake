# Compile flags for syncbn's own targets: warnings (-Wall -Wextra clean is a
# release gate) and -fno-math-errno, which lets GCC vectorize sqrt in the
# statistics loops (syncbn never reads errno after a math call).
function(syncbn_target_warnings target)
  set(flags -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor)
  if(SYNCBN_WERROR)
    list(APPEND flags -Werror)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${flags} -fno-math-errno>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
endfunction()
