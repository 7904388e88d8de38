# The optional libtorch layer (syncbn::libtorch): synchronized batch norm for
# torch::nn C++ models. SYNCBN_TORCH: AUTO (where find_package(Torch)
# succeeds), ON (require it) or OFF. Debian: libtorch-dev (CPU only).
#
# Sets SYNCBN_WITH_TORCH; when ON, the imported target `torch` exists.
set(SYNCBN_TORCH "AUTO" CACHE STRING "The libtorch layer: AUTO (where libtorch is found), ON or OFF")
set_property(CACHE SYNCBN_TORCH PROPERTY STRINGS AUTO ON OFF)
if(NOT SYNCBN_TORCH MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "SYNCBN_TORCH: expected AUTO, ON or OFF, got '${SYNCBN_TORCH}'")
endif()

set(SYNCBN_WITH_TORCH OFF)
if(NOT SYNCBN_TORCH STREQUAL "OFF")
  find_package(Torch QUIET)
  if(Torch_FOUND OR TORCH_FOUND)
    set(SYNCBN_WITH_TORCH ON)
    message(STATUS "syncbn: the libtorch layer over libtorch ${Torch_VERSION}")
  elseif(SYNCBN_TORCH STREQUAL "ON")
    message(FATAL_ERROR "SYNCBN_TORCH=ON but libtorch was not found (install libtorch-dev, or set Torch_DIR)")
  else()
    message(STATUS "syncbn: no libtorch found: the libtorch layer is not built (install libtorch-dev)")
  endif()
endif()
