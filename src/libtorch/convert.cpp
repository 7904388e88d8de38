// convert_sync_batchnorm, revert_sync_batchnorm and check_synchronized:
// the containers rebuilt around the replaced layers (see convert.hpp for
// why replace_module is not enough).

#include "syncbn/libtorch/convert.hpp"

#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>

#include "module_state.hpp"
#include "syncbn/error.hpp"

namespace syncbn::libtorch {
namespace {

// A leaf's replacement, as an AnyModule a Sequential can hold; empty: keep it.
using Replace = std::function<torch::nn::AnyModule(const std::shared_ptr<torch::nn::Module>&)>;

template <class Sync, class Plain>
torch::nn::AnyModule to_sync(const Plain& plain, const SyncOptions& sync) {
  auto out = std::make_shared<Sync>(plain.options, sync);
  detail::carry_state(plain, *out);
  return torch::nn::AnyModule(out);
}

template <class Plain, class Sync>
torch::nn::AnyModule to_plain(const Sync& synced) {
  auto out = std::make_shared<Plain>(synced.options);
  detail::carry_state(synced, *out);
  return torch::nn::AnyModule(out);
}

std::shared_ptr<torch::nn::Module> rebuild(const std::shared_ptr<torch::nn::Module>& module, const Replace& replace);

// "a, b, c".
std::string joined(const std::vector<std::string>& names) {
  std::ostringstream out;
  for (std::size_t i = 0; i < names.size(); ++i) out << (i == 0 ? "" : ", ") << names[i];
  return out.str();
}

// A child as a Sequential holds it: replaced, or as it was. (A Sequential
// holds modules with a forward: no ModuleList, ModuleDict or plain
// Sequential inside one.)
torch::nn::AnyModule rebuilt_child(const torch::nn::AnyModule& child, const Replace& replace) {
  torch::nn::AnyModule replaced = replace(child.ptr());
  return replaced.is_empty() ? child : replaced;
}

std::shared_ptr<torch::nn::Module> rebuild(const std::shared_ptr<torch::nn::Module>& module, const Replace& replace) {
  if (auto seq = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(module)) {
    auto out = std::make_shared<torch::nn::SequentialImpl>();
    const auto names = seq->named_children();
    std::size_t i = 0;
    for (const torch::nn::AnyModule& child : *seq) out->push_back(names[i++].key(), rebuilt_child(child, replace));
    return out;
  }
  if (auto list = std::dynamic_pointer_cast<torch::nn::ModuleListImpl>(module)) {
    auto out = std::make_shared<torch::nn::ModuleListImpl>();
    for (const auto& child : *list) out->push_back(rebuild(child, replace));
    return out;
  }
  if (auto dict = std::dynamic_pointer_cast<torch::nn::ModuleDictImpl>(module)) {
    auto out = std::make_shared<torch::nn::ModuleDictImpl>();
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> items;
    for (const auto& [key, child] : dict->items()) items.emplace_back(key, rebuild(child, replace));
    out->update(items);
    return out;
  }
  torch::nn::AnyModule replaced = replace(module);
  return replaced.is_empty() ? module : replaced.ptr();
}

}  // namespace

std::shared_ptr<torch::nn::Module> convert_sync_batchnorm(const std::shared_ptr<torch::nn::Module>& module,
                                                          const SyncOptions& sync) {
  SYNCBN_CHECK(module != nullptr, "convert_sync_batchnorm: the module is null, expected a module");
  return rebuild(module, [&sync](const std::shared_ptr<torch::nn::Module>& m) {
    if (auto a = std::dynamic_pointer_cast<torch::nn::BatchNorm1dImpl>(m)) return to_sync<SyncBatchNorm1dImpl>(*a, sync);
    if (auto b = std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(m)) return to_sync<SyncBatchNorm2dImpl>(*b, sync);
    if (auto c = std::dynamic_pointer_cast<torch::nn::BatchNorm3dImpl>(m)) return to_sync<SyncBatchNorm3dImpl>(*c, sync);
    return torch::nn::AnyModule();
  });
}

std::shared_ptr<torch::nn::Module> revert_sync_batchnorm(const std::shared_ptr<torch::nn::Module>& module) {
  SYNCBN_CHECK(module != nullptr, "revert_sync_batchnorm: the module is null, expected a module");
  return rebuild(module, [](const std::shared_ptr<torch::nn::Module>& m) {
    if (auto a = std::dynamic_pointer_cast<SyncBatchNorm1dImpl>(m)) return to_plain<torch::nn::BatchNorm1dImpl>(*a);
    if (auto b = std::dynamic_pointer_cast<SyncBatchNorm2dImpl>(m)) return to_plain<torch::nn::BatchNorm2dImpl>(*b);
    if (auto c = std::dynamic_pointer_cast<SyncBatchNorm3dImpl>(m)) return to_plain<torch::nn::BatchNorm3dImpl>(*c);
    return torch::nn::AnyModule();
  });
}

void check_synchronized(const torch::nn::Module& module, const char* op) {
  std::vector<std::string> plain;
  for (const auto& item : module.named_modules("", /*include_self=*/true)) {
    const torch::nn::Module* m = item.value().get();
    const char* kind = dynamic_cast<const torch::nn::BatchNorm1dImpl*>(m)   ? "BatchNorm1d"
                       : dynamic_cast<const torch::nn::BatchNorm2dImpl*>(m) ? "BatchNorm2d"
                       : dynamic_cast<const torch::nn::BatchNorm3dImpl*>(m) ? "BatchNorm3d"
                                                                             : nullptr;
    if (kind != nullptr) plain.push_back("'" + (item.key().empty() ? std::string("(the module itself)") : item.key()) +
                                         "' (torch::nn::" + kind + ")");
  }
  if (plain.empty()) return;
  SYNCBN_THROW(InvalidArgument, op, ": ", plain.size() == 1 ? "a plain batch norm" : "plain batch norms", " at ",
               joined(plain),
               ", expected SyncBatchNorm layers: a synchronized run would normalise each replica's shard alone "
               "there (convert_sync_batchnorm rebuilds Sequential, ModuleList and ModuleDict; a module of your own "
               "builds its layers as syncbn::libtorch::SyncBatchNorm, docs/usage.md \"With libtorch\")");
}

void check_layers_ran(const torch::nn::Module& module, const char* op) {
  std::vector<std::string> idle;
  for (const auto& item : module.named_modules("", /*include_self=*/true)) {
    const auto* s = dynamic_cast<const Synchronized*>(item.value().get());
    if (s != nullptr && s->training_forwards() == 0)
      idle.push_back("'" + (item.key().empty() ? std::string("(the module itself)") : item.key()) + "' (" +
                     s->label() + ")");
  }
  if (idle.empty()) return;
  SYNCBN_THROW(InvalidArgument, op, ": the synchronized batch norm", idle.size() == 1 ? " " : "s ", joined(idle),
               " ran no training forward, expected every one to run in a training "
               "step: the model's forward calls another layer there (Module::replace_module swaps the registered "
               "child, not the member that forward calls; build the module with SyncBatchNorm layers, "
               "docs/usage.md \"With libtorch\")");
}

}  // namespace syncbn::libtorch
