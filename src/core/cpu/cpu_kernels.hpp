#pragma once
// The kernel tables that every CPU level defines in its own namespace
// (Note [CPU dispatch] in cpu/isa.hpp).

#include "cpu/isa.hpp"

#include "backend/kernels.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {

extern const core::detail::ElementwiseKernels kElementwiseKernels;
extern const core::detail::ReduceKernels kReduceKernels;
extern const core::detail::BlasKernels kBlasKernels;
extern const core::detail::ActivationKernels kActivationKernels;
extern const core::detail::BatchNormKernels kBatchNormKernels;
extern const core::detail::LossKernels kLossKernels;

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
