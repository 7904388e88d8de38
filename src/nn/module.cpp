// Module: registries, tree walks, copies and moves.

#include "syncbn/nn/module.hpp"
#include "syncbn/nn/replication_context.hpp"

#include "syncbn/core/splitmix64.hpp"
#include "syncbn/error.hpp"

namespace syncbn::nn {

void Module::on_replicate(ReplicationContext& /*context*/, int /*copy_id*/) {}

void Module::attach_replica(ReplicationContext& context, int copy_id) {
  replica_id_ = copy_id;
  on_replicate(context, copy_id);
}

void Module::check_replica_thread() const {
  const int thread_copy = ReplicaThread::current();
  if (thread_copy < 0 || thread_copy == replica_id_) return;
  SYNCBN_THROW(InvalidArgument, describe(), ": called by the thread of replica ", thread_copy, ", but this module ",
               replica_id_ < 0 ? std::string("is not a replica (it belongs to the original model)")
                               : "belongs to replica " + std::to_string(replica_id_),
               ", expected a module of replica ", thread_copy,
               "; is a child kept in a member pointer? Copies of a module share such pointers: reach children "
               "through child(index) / child_as<T>(index) with the index register_module returned");
}

namespace {

template <class Entries>
bool has_name(const Entries& entries, const std::string& name) {
  for (const auto& entry : entries)
    if (entry.first == name) return true;
  return false;
}

}  // namespace

std::size_t Module::register_parameter(const std::string& name, Tensor value) {
  SYNCBN_CHECK(value.defined(), describe(), ": parameter '", name, "' is undefined, expected a tensor");
  SYNCBN_CHECK(!has_name(params_, name), describe(), ": a parameter named '", name,
               "' is already registered, expected a new name");
  Tensor grad = Tensor::zeros(value.shape(), value.dtype(), value.device());
  params_.emplace_back(name, std::make_shared<Parameter>(Parameter{std::move(value), std::move(grad)}));
  return params_.size() - 1;
}

void Module::share_parameter(std::size_t index, std::shared_ptr<Parameter> source) {
  SYNCBN_CHECK(index < params_.size() && source != nullptr, describe(), ": share_parameter(", index,
               ") got ", source == nullptr ? "a null parameter" : "an index out of range", ", expected one of its ",
               params_.size(), " parameters and a parameter object");
  params_[index].second = std::move(source);
}

std::size_t Module::register_buffer(const std::string& name, Tensor value) {
  SYNCBN_CHECK(!has_name(buffers_, name), describe(), ": a buffer named '", name,
               "' is already registered, expected a new name");
  buffers_.emplace_back(name, std::move(value));
  return buffers_.size() - 1;
}

std::size_t Module::register_module(const std::string& name, std::shared_ptr<Module> child) {
  SYNCBN_CHECK(child != nullptr, describe(), ": child '", name, "' is null, expected a module");
  SYNCBN_CHECK(!has_name(children_, name), describe(), ": a child named '", name,
               "' is already registered, expected a new name");
  // A child that contains this module would make the tree a cycle, which
  // every walk over it (parameters, replication, conversion) would follow
  // forever.
  for (const auto& [path, m] : child->named_modules())
    SYNCBN_CHECK(m != this, describe(), ": child '", name, "' contains this module",
                 path.empty() ? std::string(" (it is this module)") : " (at '" + path + "')",
                 ", expected a module tree without cycles");
  children_.emplace_back(name, std::move(child));
  return children_.size() - 1;
}

void Module::replace_child(const std::string& name, std::shared_ptr<Module> child) {
  SYNCBN_CHECK(child != nullptr, describe(), ": replace_child('", name, "') got a null module, expected a module");
  for (auto& [child_name, module] : children_) {
    if (child_name == name) {
      module = std::move(child);
      return;
    }
  }
  std::string names;
  for (const auto& [child_name, module] : children_) names += (names.empty() ? "'" : ", '") + child_name + "'";
  SYNCBN_THROW(InvalidArgument, describe(), ": replace_child: no child named '", name, "', expected one of ",
               names.empty() ? std::string("its children (it has none)") : names);
}

void Module::collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Parameter*>>& out) {
  for (auto& [name, p] : params_) out.emplace_back(prefix + name, p.get());
  for (auto& [name, c] : children_) c->collect_parameters(prefix + name + ".", out);
}

void Module::collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, Tensor*>>& out) {
  for (auto& [name, b] : buffers_)
    if (b.defined()) out.emplace_back(prefix + name, &b);
  for (auto& [name, c] : children_) c->collect_buffers(prefix + name + ".", out);
}

void Module::collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out) {
  out.emplace_back(prefix.empty() ? prefix : prefix.substr(0, prefix.size() - 1), this);
  for (auto& [name, c] : children_) c->collect_modules(prefix + name + ".", out);
}

std::vector<std::pair<std::string, Parameter*>> Module::named_parameters() {
  std::vector<std::pair<std::string, Parameter*>> out;
  collect_parameters("", out);
  return out;
}

std::vector<Parameter*> Module::parameters() {
  std::vector<Parameter*> out;
  for (auto& [name, p] : named_parameters()) out.push_back(p);
  return out;
}

std::vector<std::pair<std::string, Tensor*>> Module::named_buffers() {
  std::vector<std::pair<std::string, Tensor*>> out;
  collect_buffers("", out);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out;
  collect_modules("", out);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, c] : children_) c->train(on);
}

void Module::zero_grad() {
  for (auto& [name, p] : named_parameters()) p->grad.fill_(0.0);
}

void Module::to(Device device) {
  device.check_available();
  for (auto& [name, p] : params_) {
    p->value = p->value.to(device);
    p->grad = p->grad.to(device);
  }
  for (auto& [name, b] : buffers_)
    if (b.defined()) b = b.to(device);
  for (auto& [name, c] : children_) c->to(device);
}

std::shared_ptr<Module> Module::clone_structure() const {
  std::shared_ptr<Module> copy = shallow_copy();
  // Own Parameter objects (sharing their tensors for now), own children.
  for (auto& [name, p] : copy->params_) p = std::make_shared<Parameter>(*p);
  for (auto& [name, c] : copy->children_) c = c->clone_structure();
  copy->clear_cache();
  return copy;
}

std::shared_ptr<Module> Module::clone() const {
  std::shared_ptr<Module> copy = clone_structure();
  for (auto& [name, p] : copy->named_parameters()) {
    p->value = p->value.clone();
    p->grad = p->grad.clone();
  }
  for (auto& [name, b] : copy->named_buffers()) *b = b->clone();
  return copy;
}

std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) {
  // splitmix64's mixing of seed ^ (stream * increment): splitmix64 adds the
  // increment before it mixes, so it is taken off first (the seeds stay
  // those of every earlier release).
  return core::splitmix64((seed ^ (stream * core::kSplitmixIncrement)) - core::kSplitmixIncrement);
}

}  // namespace syncbn::nn
