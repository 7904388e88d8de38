#pragma once
// Declarations of the CPU backend's kernel tables.

#include "backend/kernels.hpp"

namespace syncbn::detail {

extern const MemoryKernels kCpuMemoryKernels;
extern const ElementwiseKernels kCpuElementwiseKernels;
extern const ReduceKernels kCpuReduceKernels;

}  // namespace syncbn::detail
