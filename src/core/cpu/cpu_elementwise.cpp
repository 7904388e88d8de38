// CPU backend: element-wise arithmetic (the specification of the CUDA kernels).

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include <cmath>
#include <cstdint>

#include "backend/dispatch.hpp"
#include "cpu/cpu_kernels.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

void cpu_binary(Device /*device*/, core::detail::BinaryOp op, DType dtype, std::int64_t n, const void* a, const void* b, void* out) {
  core::detail::dispatch_floating(dtype, "binary", [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a);
    const T* y = static_cast<const T*>(b);
    T* z = static_cast<T*>(out);
    switch (op) {
      case core::detail::BinaryOp::Add: for (std::int64_t i = 0; i < n; ++i) z[i] = x[i] + y[i]; break;
      case core::detail::BinaryOp::Sub: for (std::int64_t i = 0; i < n; ++i) z[i] = x[i] - y[i]; break;
      case core::detail::BinaryOp::Mul: for (std::int64_t i = 0; i < n; ++i) z[i] = x[i] * y[i]; break;
    }
  });
}

void cpu_axpby(Device /*device*/, DType dtype, std::int64_t n, double alpha, const void* x, double beta, void* y) {
  core::detail::dispatch_floating(dtype, "axpby", [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    T* ys = static_cast<T*>(y);
    const T a = static_cast<T>(alpha);
    const T b = static_cast<T>(beta);
    if (beta == 1.0) {
      for (std::int64_t i = 0; i < n; ++i) ys[i] += a * xs[i];
    } else if (beta == 0.0) {  // y may hold garbage (or NaN): do not read it
      for (std::int64_t i = 0; i < n; ++i) ys[i] = a * xs[i];
    } else {
      for (std::int64_t i = 0; i < n; ++i) ys[i] = a * xs[i] + b * ys[i];
    }
  });
}

void cpu_scale(Device /*device*/, DType dtype, std::int64_t n, double alpha, void* x) {
  core::detail::dispatch_floating(dtype, "scale", [&](auto tag) {
    using T = decltype(tag);
    T* xs = static_cast<T*>(x);
    const T a = static_cast<T>(alpha);
    for (std::int64_t i = 0; i < n; ++i) xs[i] *= a;
  });
}

// Note [Adam step] in src/core/ops.cpp: float64 arithmetic per element,
// each result rounded once to the dtype.
void cpu_adam(Device /*device*/, DType dtype, std::int64_t n, const core::detail::AdamCoefficients& c, void* param,
              const void* grad, void* exp_avg, void* exp_avg_sq, void* max_exp_avg_sq) {
  core::detail::dispatch_floating(dtype, "adam_update_", [&](auto tag) {
    using T = decltype(tag);
    T* ps = static_cast<T*>(param);
    const T* gs = static_cast<const T*>(grad);
    T* ms = static_cast<T*>(exp_avg);
    T* vs = static_cast<T*>(exp_avg_sq);
    T* vmaxs = static_cast<T*>(max_exp_avg_sq);  // null without amsgrad
    for (std::int64_t i = 0; i < n; ++i) {
      double p = static_cast<double>(ps[i]);
      const double g = static_cast<double>(gs[i]) + c.grad_decay * p;
      p *= c.param_scale;
      const double m = c.beta1 * static_cast<double>(ms[i]) + (1.0 - c.beta1) * g;
      const double v = c.beta2 * static_cast<double>(vs[i]) + (1.0 - c.beta2) * g * g;
      double second = v;
      if (vmaxs != nullptr) {
        const double old_max = static_cast<double>(vmaxs[i]);
        second = (v != v || v > old_max) ? v : old_max;  // torch.maximum: NaN wins
        vmaxs[i] = static_cast<T>(second);
      }
      const double denom = std::sqrt(second) / c.bias_correction2_sqrt + c.eps;
      ps[i] = static_cast<T>(p - c.step_size * m / denom);
      ms[i] = static_cast<T>(m);
      vs[i] = static_cast<T>(v);
    }
  });
}

}  // namespace

const core::detail::ElementwiseKernels kElementwiseKernels{cpu_binary, cpu_axpby, cpu_scale, cpu_adam};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
