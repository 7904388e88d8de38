# SYNCBN_SANITIZE applies sanitizers to all host C++ code of the build
# (library, tests, examples), so that instrumented and plain code never mix.
if(SYNCBN_SANITIZE)
  if(NOT SYNCBN_SANITIZE MATCHES "^(address|undefined|address,undefined|undefined,address|thread)$")
    message(FATAL_ERROR "SYNCBN_SANITIZE: expected '', 'address,undefined' or 'thread', got '${SYNCBN_SANITIZE}'")
  endif()
  add_compile_options(
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${SYNCBN_SANITIZE}>
    $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
    $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=all>)
  add_link_options(-fsanitize=${SYNCBN_SANITIZE})
endif()
