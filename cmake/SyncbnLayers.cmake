# One library target per layer (Note [Layers] in docs/design.md):
#
#   syncbn_add_layer(<layer> HEADERS <paths under include/> SOURCES <files>
#                    [DEPENDS <lower layers>])
#
# creates the target syncbn_<layer> (alias syncbn::<layer>, exported as
# syncbn::<layer>). Its sources see their own folder (private headers) and the
# public headers of this layer and of the layers it DEPENDS on, nothing else:
# each layer's public headers are staged into a folder of their own in the
# build tree (symbolic links to include/), so that including another layer's
# header without depending on it, or a private header of another folder, is a
# compile error.

include_guard(GLOBAL)
include(GNUInstallDirs)

function(syncbn_add_layer layer)
  cmake_parse_arguments(arg "" "" "HEADERS;SOURCES;DEPENDS" ${ARGN})
  set(target syncbn_${layer})
  add_library(${target} ${arg_SOURCES})
  add_library(syncbn::${layer} ALIAS ${target})
  set_target_properties(${target} PROPERTIES
    EXPORT_NAME ${layer}
    CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF
    POSITION_INDEPENDENT_CODE ON)

  set(stage "${PROJECT_BINARY_DIR}/layers/${layer}")
  foreach(header IN LISTS arg_HEADERS)
    get_filename_component(parent "${stage}/${header}" DIRECTORY)
    file(MAKE_DIRECTORY "${parent}")
    if(NOT EXISTS "${stage}/${header}")
      file(CREATE_LINK "${PROJECT_SOURCE_DIR}/include/${header}" "${stage}/${header}" SYMBOLIC)
    endif()
  endforeach()
  target_include_directories(${target}
    PUBLIC $<BUILD_INTERFACE:${stage}> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}")
  # Consumers need C++20 (the .cu files of core are C++17, see SyncbnCuda.cmake,
  # so the requirement is on the interface only).
  target_compile_features(${target} INTERFACE cxx_std_20)
  foreach(dep IN LISTS arg_DEPENDS)
    target_link_libraries(${target} PUBLIC syncbn_${dep})
  endforeach()
  syncbn_target_warnings(${target})
  syncbn_library_flags(${target})
  set_property(GLOBAL APPEND PROPERTY SYNCBN_LAYER_TARGETS ${target})
endfunction()
