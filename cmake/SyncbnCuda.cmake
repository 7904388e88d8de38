# Optional CUDA backend. CUDA is never a required project language: the CPU
# build must configure and pass on machines without a toolkit.
#
# Sets SYNCBN_WITH_CUDA (ON/OFF) and, when ON, the imported targets
# CUDA::cudart and syncbn::nccl.
set(SYNCBN_WITH_CUDA OFF)
set(SYNCBN_WITH_CUDNN OFF)
if(NOT SYNCBN_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "SYNCBN_CUDA: expected AUTO, ON or OFF, got '${SYNCBN_CUDA}'")
endif()

if(NOT SYNCBN_CUDA STREQUAL "OFF")
  # nvcc is often installed outside PATH; look where the toolkit installs it.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(SYNCBN_NVCC nvcc HINTS ENV CUDA_PATH ENV CUDA_HOME PATH_SUFFIXES bin
                 PATHS /usr/local/cuda/bin)
    if(SYNCBN_NVCC)
      set(CMAKE_CUDA_COMPILER "${SYNCBN_NVCC}" CACHE FILEPATH "CUDA compiler")
    endif()
  endif()
  # Default to Hopper (H100/H200); override with -DCMAKE_CUDA_ARCHITECTURES=...
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures")
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED GLOBAL)
    set(SYNCBN_WITH_CUDA ON)
  elseif(SYNCBN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SYNCBN_CUDA=ON but no CUDA compiler was found (set CUDACXX or CMAKE_CUDA_COMPILER)")
  else()
    message(STATUS "syncbn: no CUDA compiler found, building the CPU backend only")
  endif()
endif()

if(SYNCBN_WITH_CUDA)
  # CMake 3.25 cannot name nvcc's C++20 dialect (and would otherwise derive
  # CUDA20 from CMAKE_CXX_STANDARD_REQUIRED). The .cu files include only
  # headers that are valid C++17, so they are compiled as C++17.
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  # NCCL ships with the toolkit on some installs (lib/, not lib64/) and
  # separately on others.
  find_path(SYNCBN_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
  find_library(SYNCBN_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_TARGET_DIR}/lib
               ENV NCCL_HOME PATH_SUFFIXES lib lib64)
  if(SYNCBN_NCCL_INCLUDE_DIR AND SYNCBN_NCCL_LIBRARY)
    add_library(syncbn::nccl INTERFACE IMPORTED GLOBAL)
    target_include_directories(syncbn::nccl INTERFACE "${SYNCBN_NCCL_INCLUDE_DIR}")
    target_link_libraries(syncbn::nccl INTERFACE "${SYNCBN_NCCL_LIBRARY}")
    set(SYNCBN_WITH_NCCL ON)
    message(STATUS "syncbn: NCCL ${SYNCBN_NCCL_LIBRARY}")
  else()
    set(SYNCBN_WITH_NCCL OFF)
    message(STATUS "syncbn: NCCL not found; multi-GPU reductions use peer copies")
  endif()
  # cuDNN ships with the toolkit on some installs and separately on others.
  find_path(SYNCBN_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV CUDNN_HOME PATH_SUFFIXES include)
  find_library(SYNCBN_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR} ENV CUDNN_HOME PATH_SUFFIXES lib lib64)
  if(SYNCBN_CUDNN_INCLUDE_DIR AND SYNCBN_CUDNN_LIBRARY)
    add_library(syncbn::cudnn INTERFACE IMPORTED GLOBAL)
    target_include_directories(syncbn::cudnn INTERFACE "${SYNCBN_CUDNN_INCLUDE_DIR}")
    target_link_libraries(syncbn::cudnn INTERFACE "${SYNCBN_CUDNN_LIBRARY}")
    set(SYNCBN_WITH_CUDNN ON)
    message(STATUS "syncbn: cuDNN ${SYNCBN_CUDNN_LIBRARY}")
  else()
    set(SYNCBN_WITH_CUDNN OFF)
    message(STATUS "syncbn: cuDNN not found; CUDA convolutions throw Unsupported")
  endif()
endif()
