// split_weight_decay: which parameters decay, found from the module tree.

#include "syncbn/optim/param_groups.hpp"

#include <set>
#include <string>

#include "syncbn/error.hpp"
#include "syncbn/nn/batch_norm.hpp"

namespace syncbn::optim {

ParamGroups split_weight_decay(nn::Module& module, double weight_decay, NoDecay exempt) {
  SYNCBN_CHECK(weight_decay >= 0, "split_weight_decay: weight_decay is ", weight_decay, ", expected >= 0");
  const auto known = static_cast<std::uint8_t>(NoDecay::Norm | NoDecay::Bias);
  SYNCBN_CHECK((static_cast<std::uint8_t>(exempt) & ~known) == 0, "split_weight_decay: exempt is ",
               static_cast<unsigned>(exempt), ", expected a combination of NoDecay::Norm (1) and NoDecay::Bias (2)");

  // Batch-norm layers are recognised by type, so SyncBatchNorm (a BatchNorm)
  // and layers converted by convert_sync_batchnorm count too.
  std::set<const nn::Parameter*> exempted;
  if (contains(exempt, NoDecay::Norm)) {
    for (const auto& [path, m] : module.named_modules())
      if (dynamic_cast<nn::BatchNorm*>(m) != nullptr)
        for (const auto& [name, p] : m->named_parameters()) exempted.insert(p);
  }
  ParamGroups groups(2);
  groups[0].weight_decay = weight_decay;
  groups[1].weight_decay = 0.0;
  for (const auto& [name, p] : module.named_parameters()) {
    const std::size_t dot = name.rfind('.');
    const bool is_bias = name.substr(dot == std::string::npos ? 0 : dot + 1) == "bias";
    const bool exempt_param = exempted.count(p) != 0 || (contains(exempt, NoDecay::Bias) && is_bias);
    groups[exempt_param ? 1 : 0].params.push_back(p);
  }
  return groups;
}

}  // namespace syncbn::optim
