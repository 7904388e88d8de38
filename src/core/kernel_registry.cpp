// Chooses a backend's kernel table by device kind (Note [Backend tables]);
// the CPU tables of the active CPU level (Note [CPU dispatch]).

#include "backend/dispatch.hpp"
#include "backend/kernels.hpp"
#include "cpu/kernel_set.hpp"
#include "syncbn/error.hpp"

#if SYNCBN_WITH_CUDA
#include "cuda/cuda_kernels.hpp"
#endif

namespace syncbn::core::detail {
namespace {

#if SYNCBN_WITH_CUDA
#define SYNCBN_CUDA_TABLE(name) (&(name))
#else
#define SYNCBN_CUDA_TABLE(name) (nullptr)
#endif

// The CUDA table of a family, or Unsupported in a build without CUDA.
template <class Table>
const Table& cuda_table([[maybe_unused]] const Table* table, [[maybe_unused]] const char* family) {
#if SYNCBN_WITH_CUDA
  return *table;
#else
  SYNCBN_THROW(Unsupported, family,
               ": a CUDA device was requested, expected a CPU device: this build of syncbn has no CUDA backend "
               "(configure with SYNCBN_CUDA=ON on a machine with nvcc)");
#endif
}

}  // namespace

void throw_unsupported_dtype(DType dtype, const char* op) {
  SYNCBN_THROW(InvalidArgument, op, ": dtype ", dtype_name(dtype), " is not supported, expected float32 or float64");
}

const MemoryKernels& memory_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return cpu::kMemoryKernels;
  return cuda_table<MemoryKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kMemoryKernels), "memory");
}

const ElementwiseKernels& elementwise_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return *cpu::active_kernel_set().elementwise;
  return cuda_table<ElementwiseKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kElementwiseKernels), "elementwise");
}

const ReduceKernels& reduce_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return *cpu::active_kernel_set().reduce;
  return cuda_table<ReduceKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kReduceKernels), "reduce");
}

const BlasKernels& blas_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return cpu::kMatmulKernels;
  return cuda_table<BlasKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kBlasKernels), "gemm");
}

const ActivationKernels& activation_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return *cpu::active_kernel_set().activation;
  return cuda_table<ActivationKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kActivationKernels), "activation");
}

const BatchNormKernels& batchnorm_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return *cpu::active_kernel_set().batchnorm;
  return cuda_table<BatchNormKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kBatchNormKernels), "batch norm");
}

const LossKernels& loss_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return *cpu::active_kernel_set().loss;
  return cuda_table<LossKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kLossKernels), "loss");
}

const ConvKernels& conv_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return cpu::kConvKernels;
  return cuda_table<ConvKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kConvKernels), "conv2d");
}

const PoolKernels& pool_kernels(DeviceKind kind) {
  if (kind == DeviceKind::CPU) return cpu::kPoolKernels;
  return cuda_table<PoolKernels>(SYNCBN_CUDA_TABLE(cuda::detail::kPoolKernels), "pool2d");
}

const MemoryKernels& copy_kernels(Device dst, Device src) {
  return memory_kernels(dst.is_cuda() || src.is_cuda() ? DeviceKind::CUDA : DeviceKind::CPU);
}

}  // namespace syncbn::core::detail
