#pragma once
// Gradients summed over the copies that replicate() made, as DataParallel's
// reduction would sum them, for the tests that drive replicas by hand.

#include <cstddef>
#include <vector>

#include "syncbn/parallel/replicate.hpp"

namespace syncbn::testing {

/// The sum over every replica of the gradient of parameter `index` (in
/// parameters() order); the replicas' gradients are zeroed.
inline std::vector<double> take_grad_sum(parallel::Replication& replicas, std::size_t index) {
  std::vector<double> total;
  for (std::size_t k = 0; k < replicas.size(); ++k) {
    auto* p = replicas[k].parameters()[index];
    const auto g = p->grad.to_vector<double>();
    if (total.empty()) total.assign(g.size(), 0.0);
    for (std::size_t i = 0; i < g.size(); ++i) total[i] += g[i];
    p->grad.fill_(0.0);
  }
  return total;
}

}  // namespace syncbn::testing
