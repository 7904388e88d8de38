// This level's kernel set (compiled once per CPU level).

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include "cpu/cpu_kernels.hpp"
#include "cpu/kernel_set.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {

extern const KernelSet kKernelSet{&kElementwiseKernels, &kReduceKernels,    &kBlasKernels,
                                  &kActivationKernels,  &kBatchNormKernels, &kLossKernels};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
