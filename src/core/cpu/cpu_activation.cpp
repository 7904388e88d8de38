// CPU backend: activations (the specification of the CUDA kernels).

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include <cstdint>

#include "backend/dispatch.hpp"
#include "cpu/cpu_kernels.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

void cpu_relu_forward(Device /*device*/, DType dtype, std::int64_t n, const void* x, void* y) {
  core::detail::dispatch_floating(dtype, "relu", [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    T* ys = static_cast<T*>(y);
    for (std::int64_t i = 0; i < n; ++i) ys[i] = xs[i] > T(0) ? xs[i] : T(0);
  });
}

void cpu_relu_backward(Device /*device*/, DType dtype, std::int64_t n, const void* dy, const void* y, void* dx) {
  core::detail::dispatch_floating(dtype, "relu_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* dys = static_cast<const T*>(dy);
    const T* ys = static_cast<const T*>(y);
    T* dxs = static_cast<T*>(dx);
    for (std::int64_t i = 0; i < n; ++i) dxs[i] = ys[i] > T(0) ? dys[i] : T(0);
  });
}

}  // namespace

const core::detail::ActivationKernels kActivationKernels{cpu_relu_forward, cpu_relu_backward};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
