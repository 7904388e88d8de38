# cmake --install: headers, the layer libraries and the CMake package, so that
#   find_package(syncbn CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE syncbn::syncbn)
# works, with the Threads, ZLIB, CUDA and NCCL dependencies the build was made
# with. nlohmann_json is a build-time dependency of core only (not exported).

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

get_property(layer_targets GLOBAL PROPERTY SYNCBN_LAYER_TARGETS)
install(TARGETS ${layer_targets} syncbn
  EXPORT syncbnTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/syncbn" DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(config_dir "${CMAKE_INSTALL_LIBDIR}/cmake/syncbn")
install(EXPORT syncbnTargets NAMESPACE syncbn:: DESTINATION "${config_dir}" FILE syncbnTargets.cmake)

# What the package needs to recreate the dependencies of the build.
set(SYNCBN_PACKAGE_WITH_CUDA ${SYNCBN_WITH_CUDA})
set(SYNCBN_PACKAGE_WITH_NCCL OFF)
if(SYNCBN_WITH_CUDA AND SYNCBN_WITH_NCCL)
  set(SYNCBN_PACKAGE_WITH_NCCL ON)
  get_filename_component(SYNCBN_PACKAGE_NCCL_DIR "${SYNCBN_NCCL_LIBRARY}" DIRECTORY)
endif()
# Static libraries carry their private link dependencies: the BLAS and
# cuDNN libraries found here are recorded by path.
set(SYNCBN_PACKAGE_WITH_BLAS ${SYNCBN_WITH_BLAS})
set(SYNCBN_PACKAGE_WITH_DNNL ${SYNCBN_WITH_DNNL})
set(SYNCBN_PACKAGE_BLAS_LIBRARIES "${BLAS_LIBRARIES}")
set(SYNCBN_PACKAGE_WITH_CUDNN ${SYNCBN_WITH_CUDNN})
set(SYNCBN_PACKAGE_WITH_MPI ${SYNCBN_WITH_MPI})
set(SYNCBN_PACKAGE_WITH_TORCH ${SYNCBN_WITH_TORCH})
set(SYNCBN_PACKAGE_CUDNN_LIBRARY "${SYNCBN_CUDNN_LIBRARY}")
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/syncbnConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/syncbnConfig.cmake" INSTALL_DESTINATION "${config_dir}")
# 0.x releases: a minor version may change the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/syncbnConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/syncbnConfig.cmake" "${PROJECT_BINARY_DIR}/syncbnConfigVersion.cmake"
  DESTINATION "${config_dir}")
