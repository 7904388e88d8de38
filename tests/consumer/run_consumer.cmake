# cmake -DWAY=installed|subproject -DSOURCE_DIR=<syncbn> -DBUILD_DIR=<syncbn build> -DWORK_DIR=<scratch>
#       -DGENERATOR=<generator> -DCXX=<compiler> [-DJOBS=N] [-DBUILD_TYPE=<type>] -P run_consumer.cmake
#
# installed:  cmake --install BUILD_DIR into WORK_DIR/prefix, then configure,
#             build and run tests/consumer/installed against it;
# subproject: configure, build and run tests/consumer/subproject, which adds
#             SOURCE_DIR with add_subdirectory (CPU only, Catch2 unavailable),
#             in build type BUILD_TYPE (empty: CMake's default).
# Either way only the application's target is built (the application and
# the libraries it links), as a user's own build does.

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " command)
    message(FATAL_ERROR "failed (${rc}): ${command}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

if(NOT JOBS)
  set(JOBS 2)
endif()
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(app_build "${WORK_DIR}/build")
if(WAY STREQUAL "installed")
  run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
  run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}/tests/consumer/installed" -B "${app_build}" -G "${GENERATOR}"
      "-DCMAKE_CXX_COMPILER=${CXX}" "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
elseif(WAY STREQUAL "subproject")
  run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}/tests/consumer/subproject" -B "${app_build}" -G "${GENERATOR}"
      "-DCMAKE_CXX_COMPILER=${CXX}" "-DSYNCBN_SOURCE_DIR=${SOURCE_DIR}" "-DCONSUMER_BUILD_TYPE=${BUILD_TYPE}"
      -DSYNCBN_CUDA=OFF
      -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON)
else()
  message(FATAL_ERROR "WAY: expected installed or subproject, got '${WAY}'")
endif()
run("${CMAKE_COMMAND}" --build "${app_build}" --parallel ${JOBS} --target app)
run("${app_build}/app")
message(STATUS "${last_output}")
