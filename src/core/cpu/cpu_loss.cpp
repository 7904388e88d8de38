// CPU backend: losses (the specification of the CUDA kernels).

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/dispatch.hpp"
#include "cpu/cpu_kernels.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

// max and log(sum(exp(x - max))) of one row, in float64.
template <class T>
void row_logsumexp(const T* row, std::int64_t c, double& max, double& log_sum) {
  max = static_cast<double>(row[0]);
  for (std::int64_t j = 1; j < c; ++j) max = std::max(max, static_cast<double>(row[j]));
  double sum = 0;
  for (std::int64_t j = 0; j < c; ++j) sum += std::exp(static_cast<double>(row[j]) - max);
  log_sum = std::log(sum);
}

void cpu_cross_entropy_forward(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, const void* logits,
                               const std::int64_t* targets, void* loss) {
  core::detail::dispatch_floating(dtype, "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(logits);
    double total = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = x + i * c;
      double max = 0, log_sum = 0;
      row_logsumexp(row, c, max, log_sum);
      total += max + log_sum - static_cast<double>(row[targets[i]]);
    }
    *static_cast<T*>(loss) = static_cast<T>(n > 0 ? total / static_cast<double>(n) : 0.0);
  });
}

void cpu_cross_entropy_backward(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, const void* logits,
                                const std::int64_t* targets, double scale, void* grad) {
  core::detail::dispatch_floating(dtype, "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(logits);
    T* g = static_cast<T*>(grad);
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = x + i * c;
      double max = 0, log_sum = 0;
      row_logsumexp(row, c, max, log_sum);
      for (std::int64_t j = 0; j < c; ++j) {
        const double p = std::exp(static_cast<double>(row[j]) - max - log_sum);
        g[i * c + j] = static_cast<T>((p - (j == targets[i] ? 1.0 : 0.0)) * scale);
      }
    }
  });
}

}  // namespace

const core::detail::LossKernels kLossKernels{cpu_cross_entropy_forward, cpu_cross_entropy_backward};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
