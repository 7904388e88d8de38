// Checkpoints: state_dict in PyTorch's order, a load that checks everything
// before it copies, and their safetensors files.

#include "syncbn/nn/checkpoint.hpp"

#include <map>
#include <set>
#include <string_view>

#include "syncbn/core/safetensors.hpp"
#include "syncbn/error.hpp"

namespace syncbn::nn {
namespace {

// PyTorch's state_dict walks the modules in pre-order and emits each
// module's own parameters, then its own buffers, before its children's.
// Module lists a subtree's parameters (and, separately, buffers) own first,
// then each child's in order, so a module's own entries are the first
// (all - children's) of its lists.
void collect_state(Module& module, const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) {
  const auto params = module.named_parameters();
  const auto buffers = module.named_buffers();
  std::size_t child_params = 0, child_buffers = 0;
  for (const auto& [name, child] : module.children()) {
    child_params += child->named_parameters().size();
    child_buffers += child->named_buffers().size();
  }
  for (std::size_t i = 0; i < params.size() - child_params; ++i)
    out.emplace_back(prefix + params[i].first, params[i].second->value);
  for (std::size_t i = 0; i < buffers.size() - child_buffers; ++i)
    out.emplace_back(prefix + buffers[i].first, *buffers[i].second);
  for (const auto& [name, child] : module.children()) collect_state(*child, prefix + name + ".", out);
}

// "'a', 'b' and 3 more": long lists stay readable.
std::string name_list(const std::vector<std::string>& names) {
  constexpr std::size_t kShown = 8;
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < kShown; ++i) out += (i == 0 ? "'" : ", '") + names[i] + "'";
  if (names.size() > kShown) out += " and " + std::to_string(names.size() - kShown) + " more";
  return out;
}

std::string count_names(std::size_t n) { return std::to_string(n) + (n == 1 ? " name" : " names"); }

// `where` starts every message: "nn::load_state_dict: " or
// "nn::load: '<path>': ".
void load_state(Module& module, const std::vector<std::pair<std::string, Tensor>>& state, bool strict,
                const std::string& where) {
  std::map<std::string_view, const Tensor*> given;
  for (const auto& [name, t] : state) {
    SYNCBN_CHECK(t.defined(), where, "'", name, "' is undefined, expected a tensor");
    SYNCBN_CHECK(given.emplace(name, &t).second, where, "'", name, "' is given twice, expected distinct names");
  }
  const auto own = state_dict(module);
  std::set<std::string_view> own_names;
  std::vector<std::string> missing, unexpected;
  std::vector<std::pair<const Tensor*, const Tensor*>> copies;  // (module's, given)
  for (const auto& [name, dst] : own) {
    own_names.insert(name);
    const auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      continue;
    }
    const Tensor& src = *it->second;
    SYNCBN_CHECK(src.shape() == dst.shape(), where, "'", name, "' has shape ", src.shape(), ", expected ",
                 dst.shape(), " (the module's)");
    SYNCBN_CHECK(src.dtype() == dst.dtype(), where, "'", name, "' has dtype ", dtype_name(src.dtype()), ", expected ",
                 dtype_name(dst.dtype()), " (the module's)");
    copies.emplace_back(&dst, &src);
  }
  for (const auto& [name, t] : state)
    if (own_names.count(name) == 0) unexpected.push_back(name);
  if (strict && (!missing.empty() || !unexpected.empty())) {
    std::string got;
    if (!missing.empty()) got += "it lacks " + count_names(missing.size()) + " of the module (" + name_list(missing) + ")";
    if (!unexpected.empty())
      got += std::string(missing.empty() ? "it has " : " and has ") + count_names(unexpected.size()) +
             " the module does not (" + name_list(unexpected) + ")";
    SYNCBN_THROW(InvalidArgument, where, "the state does not match the module's names: ", got,
                 ", expected exactly the module's ", own.size(), " names (strict)");
  }
  // Everything matched: only now change the module.
  for (const auto& [dst, src] : copies) {
    // The module's own tensor (a state_dict loaded back): nothing to copy.
    if (dst->shares_storage_with(*src) && dst->storage_offset() == src->storage_offset()) continue;
    dst->copy_(*src);
  }
}

}  // namespace

std::vector<std::pair<std::string, Tensor>> state_dict(Module& module) {
  std::vector<std::pair<std::string, Tensor>> out;
  collect_state(module, "", out);
  return out;
}

void load_state_dict(Module& module, const std::vector<std::pair<std::string, Tensor>>& state, bool strict) {
  load_state(module, state, strict, "nn::load_state_dict: ");
}

void save(Module& module, const std::string& path) {
  core::save_safetensors(path, state_dict(module), {{"format", "pt"}}, "nn::save");
}

void load(Module& module, const std::string& path, bool strict) {
  const core::SafetensorsFile file = core::load_safetensors(path, "nn::load");
  load_state(module, file.tensors, strict, "nn::load: '" + path + "': ");
}

}  // namespace syncbn::nn
