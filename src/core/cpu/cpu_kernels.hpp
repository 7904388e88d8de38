#pragma once
// Declarations of the CPU backend's kernel tables.

#include "backend/kernels.hpp"

namespace syncbn::detail {

extern const MemoryKernels kCpuMemoryKernels;
extern const ElementwiseKernels kCpuElementwiseKernels;
extern const ReduceKernels kCpuReduceKernels;
extern const BlasKernels kCpuBlasKernels;
extern const ActivationKernels kCpuActivationKernels;
extern const BatchNormKernels kCpuBatchNormKernels;
extern const LossKernels kCpuLossKernels;

}  // namespace syncbn::detail
