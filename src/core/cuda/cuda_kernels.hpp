#pragma once
// Declarations of the CUDA backend's kernel tables (defined in src/core/cuda/*.cu).

#include "backend/kernels.hpp"

namespace syncbn::cuda::detail {

extern const core::detail::MemoryKernels kMemoryKernels;
extern const core::detail::ElementwiseKernels kElementwiseKernels;
extern const core::detail::ReduceKernels kReduceKernels;
extern const core::detail::BlasKernels kBlasKernels;
extern const core::detail::ActivationKernels kActivationKernels;
extern const core::detail::BatchNormKernels kBatchNormKernels;
extern const core::detail::LossKernels kLossKernels;
extern const core::detail::ConvKernels kConvKernels;
extern const core::detail::PoolKernels kPoolKernels;

}  // namespace syncbn::cuda::detail
