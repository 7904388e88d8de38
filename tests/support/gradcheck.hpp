#pragma once
// Finite-difference gradient checks in float64: the analytic backward of a
// module against central differences of L = sum(forward(x) * r) for a fixed
// random r.

#include <catch2/catch.hpp>

#include <functional>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::testing {

/// Central difference of f at every element of `values` (modified in place and restored).
inline std::vector<double> numeric_gradient(std::vector<double>& values, const std::function<double()>& f,
                                            double h = 1e-6) {
  std::vector<double> grad(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double saved = values[i];
    values[i] = saved + h;
    const double up = f();
    values[i] = saved - h;
    const double down = f();
    values[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

/// sum(a * b) on the host.
inline double dot(const Tensor& a, const std::vector<double>& b) {
  const auto av = a.to_vector<double>();
  double s = 0;
  for (std::size_t i = 0; i < av.size(); ++i) s += av[i] * b[i];
  return s;
}

/// Checks dL/dx and dL/dparameter of `module` (float64, on `x`'s device)
/// against finite differences, with L = sum(module.forward(x) * r).
inline void check_module_gradients(nn::Module& module, const Tensor& x, std::uint64_t seed,
                                   Tolerance tol = {1e-6, 1e-7}) {
  const Device device = x.device();
  const Tensor probe = module.forward(x);
  const std::vector<double> r = Tensor::randn(probe.shape(), seed, DType::Float64).to_vector<double>();

  // Analytic.
  module.zero_grad();
  module.forward(x);
  const Tensor dx = module.backward(Tensor::from_vector(r, probe.shape(), device));
  std::vector<std::vector<double>> dparams;
  for (auto& [name, p] : module.named_parameters()) dparams.push_back(p->grad.to_vector<double>());

  // Numeric, for the input.
  std::vector<double> xv = x.to_vector<double>();
  auto loss_at_x = [&] { return dot(module.forward(Tensor::from_vector(xv, x.shape(), device)), r); };
  check_close(dx, numeric_gradient(xv, loss_at_x), tol, module.describe() + ": dL/dx");

  // Numeric, for every parameter.
  auto params = module.named_parameters();
  for (std::size_t j = 0; j < params.size(); ++j) {
    nn::Parameter& p = *params[j].second;
    std::vector<double> pv = p.value.to_vector<double>();
    auto loss_at_p = [&] {
      p.value.copy_(Tensor::from_vector(pv, p.value.shape(), device));
      return dot(module.forward(x), r);
    };
    const auto numeric = numeric_gradient(pv, loss_at_p);
    p.value.copy_(Tensor::from_vector(pv, p.value.shape(), device));
    check_close(dparams[j], numeric, tol, module.describe() + ": dL/d" + params[j].first);
  }
}

}  // namespace syncbn::testing
