#pragma once
// The CPU kernels of one instruction-set level, and the levels this build
// compiled (see Note [CPU dispatch] in cpu/isa.hpp).

#include "backend/kernels.hpp"

namespace syncbn::cpu {

/// The tables of every CPU kernel family that is compiled once per level.
/// (The memory table, allocation and copies, is the same for every level.)
struct KernelSet {
  const core::detail::ElementwiseKernels* elementwise;
  const core::detail::ReduceKernels* reduce;
  const core::detail::BlasKernels* blas;
  const core::detail::ActivationKernels* activation;
  const core::detail::BatchNormKernels* batchnorm;
  const core::detail::LossKernels* loss;
};

// Each compiled level defines its set in its own namespace (kernel_set.cpp).
#if SYNCBN_CPU_LEVEL_BASELINE
namespace baseline {
extern const KernelSet kKernelSet;
}
#endif
#if SYNCBN_CPU_LEVEL_AVX2
namespace avx2 {
extern const KernelSet kKernelSet;
}
#endif
#if SYNCBN_CPU_LEVEL_AVX512
namespace avx512 {
extern const KernelSet kKernelSet;
}
#endif
#if SYNCBN_CPU_LEVEL_NATIVE
namespace native {
extern const KernelSet kKernelSet;
}
#endif

/// The set of the active level (cpu::active_capability()); throws as it does.
const KernelSet& active_kernel_set();

/// The memory table (allocation, copies, fills, conversions), one for every level.
extern const core::detail::MemoryKernels kMemoryKernels;

/// The matrix products behind matmul_: the BLAS or the active level's own
/// GEMM, as cpu::gemm_engine() says (Note [CPU GEMM engines] in cpu_blas.cpp).
extern const core::detail::BlasKernels kMatmulKernels;

/// The convolution and pooling tables, one for every level (the convolution
/// engines call the BLAS and oneDNN, which dispatch on the CPU themselves:
/// conv_engines.cpp; cpu_pool.cpp is bounded by memory traffic).
extern const core::detail::ConvKernels kConvKernels;
extern const core::detail::PoolKernels kPoolKernels;


}  // namespace syncbn::cpu
