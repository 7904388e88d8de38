#pragma once
// A module's whole state on the host, for tests that check a failed step
// left it unchanged or that two models are in the same state.

#include <vector>

#include "syncbn/nn/module.hpp"

namespace syncbn::testing {

/// Every parameter's value and gradient and every buffer, in registration
/// order, as float64 (exact for every dtype the modules use).
inline std::vector<std::vector<double>> module_state(nn::Module& m) {
  std::vector<std::vector<double>> out;
  for (auto& [name, p] : m.named_parameters()) {
    out.push_back(p->value.to_vector<double>());
    out.push_back(p->grad.to_vector<double>());
  }
  for (auto& [name, b] : m.named_buffers()) out.push_back(b->to_vector<double>());
  return out;
}

}  // namespace syncbn::testing
