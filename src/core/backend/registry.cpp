// Chooses a backend's kernel table by device kind (Note [Backend tables]).

#include <type_traits>

#include "backend/kernels.hpp"
#include "cpu/cpu_kernels.hpp"
#include "syncbn/error.hpp"

#if SYNCBN_WITH_CUDA
#include "cuda/cuda_kernels.hpp"
#endif

namespace syncbn::core::detail {
namespace {

template <class Table>
const Table& pick(DeviceKind kind, const Table& cpu, [[maybe_unused]] std::type_identity_t<const Table*> cuda,
                  [[maybe_unused]] const char* family) {
  if (kind == DeviceKind::CPU) return cpu;
#if SYNCBN_WITH_CUDA
  return *cuda;
#else
  SYNCBN_THROW(Unsupported, family,
               ": a CUDA device was requested, but this build of syncbn has no CUDA backend "
               "(configure with SYNCBN_CUDA=ON on a machine with nvcc)");
#endif
}

#if SYNCBN_WITH_CUDA
#define SYNCBN_CUDA_TABLE(name) (&(name))
#else
#define SYNCBN_CUDA_TABLE(name) (nullptr)
#endif

}  // namespace

const MemoryKernels& memory_kernels(DeviceKind kind) {
  return pick(kind, cpu::kMemoryKernels, SYNCBN_CUDA_TABLE(cuda::detail::kMemoryKernels), "memory");
}

const ElementwiseKernels& elementwise_kernels(DeviceKind kind) {
  return pick(kind, cpu::kElementwiseKernels, SYNCBN_CUDA_TABLE(cuda::detail::kElementwiseKernels), "elementwise");
}

const ReduceKernels& reduce_kernels(DeviceKind kind) {
  return pick(kind, cpu::kReduceKernels, SYNCBN_CUDA_TABLE(cuda::detail::kReduceKernels), "reduce");
}

const BlasKernels& blas_kernels(DeviceKind kind) {
  return pick(kind, cpu::kBlasKernels, SYNCBN_CUDA_TABLE(cuda::detail::kBlasKernels), "gemm");
}

const ActivationKernels& activation_kernels(DeviceKind kind) {
  return pick(kind, cpu::kActivationKernels, SYNCBN_CUDA_TABLE(cuda::detail::kActivationKernels), "activation");
}

const BatchNormKernels& batchnorm_kernels(DeviceKind kind) {
  return pick(kind, cpu::kBatchNormKernels, SYNCBN_CUDA_TABLE(cuda::detail::kBatchNormKernels), "batch norm");
}

const LossKernels& loss_kernels(DeviceKind kind) {
  return pick(kind, cpu::kLossKernels, SYNCBN_CUDA_TABLE(cuda::detail::kLossKernels), "loss");
}

const MemoryKernels& copy_kernels(Device dst, Device src) {
  return memory_kernels(dst.is_cuda() || src.is_cuda() ? DeviceKind::CUDA : DeviceKind::CPU);
}

}  // namespace syncbn::core::detail
