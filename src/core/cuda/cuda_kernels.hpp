#pragma once
// Declarations of the CUDA backend's kernel tables (defined in src/cuda/*.cu).

#include "backend/kernels.hpp"

namespace syncbn::detail {

extern const MemoryKernels kCudaMemoryKernels;
extern const ElementwiseKernels kCudaElementwiseKernels;
extern const ReduceKernels kCudaReduceKernels;
extern const BlasKernels kCudaBlasKernels;
extern const ActivationKernels kCudaActivationKernels;
extern const BatchNormKernels kCudaBatchNormKernels;
extern const LossKernels kCudaLossKernels;

}  // namespace syncbn::detail
