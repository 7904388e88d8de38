// replicate(): copies of a module tree per device and the replication callback.

#include "syncbn/parallel/replicate.hpp"

#include "replica_errors.hpp"
#include "replica_threads.hpp"
#include "syncbn/sync/worker_pool.hpp"
#include "syncbn/core/ops.hpp"

namespace syncbn::parallel {
namespace {

Tensor alias_or_copy(const Tensor& source, Device device, bool alias) {
  if (alias && source.device().shares_memory_with(device)) return source.relabel(device);
  return source.to(device);
}

}  // namespace

void Replication::abort(int failed, const std::string& reason) noexcept {
  for (auto& c : contexts_) c->abort(failed, reason);
}

void Replication::reset() {
  for (auto& c : contexts_) {
    c->reset();
    // The failed step's notes (Note [Where the replicas wait]) would
    // otherwise describe a later timeout with stale places.
    if (c->whereabouts()) c->whereabouts()->clear();
  }
}

sync::WorkerPool& Replication::worker_pool() {
  if (!threads_.pool) {
    threads_.pool = std::make_shared<sync::WorkerPool>(static_cast<int>(devices_.size()),
                                                       detail::replica_thread_setup(devices_));
  }
  return *threads_.pool;
}

Replication replicate(nn::Module& module, const std::vector<Device>& devices) {
  SYNCBN_CHECK(!devices.empty() && devices.size() <= static_cast<std::size_t>(core::kMaxReplicas), "replicate: ",
               devices.size(), " devices, expected 1 to ", core::kMaxReplicas);
  for (Device d : devices) d.check_available();

  Replication out;
  out.devices_ = devices;
  auto source_params = module.named_parameters();
  auto source_buffers = module.named_buffers();
  for (std::size_t k = 0; k < devices.size(); ++k) {
    std::shared_ptr<nn::Module> copy = module.clone_structure();
    auto params = copy->named_parameters();
    for (std::size_t j = 0; j < params.size(); ++j) {
      nn::Parameter& p = *params[j].second;
      p.value = alias_or_copy(source_params[j].second->value, devices[k], /*alias=*/true);
      p.grad = Tensor::zeros(p.value.shape(), p.value.dtype(), devices[k]);
    }
    auto buffers = copy->named_buffers();
    for (std::size_t j = 0; j < buffers.size(); ++j)
      *buffers[j].second = alias_or_copy(*source_buffers[j].second, devices[k], /*alias=*/k == 0);
    out.modules_.push_back(std::move(copy));
  }

  // The replication callback: one context per module position; every copy in
  // order, so copy 0 (the master) meets each position first.
  const auto positions = out.modules_.front()->named_modules();
  const auto whereabouts = std::make_shared<sync::Whereabouts>(static_cast<int>(devices.size()));
  for (const auto& [name, m] : positions)
    out.contexts_.push_back(std::make_shared<nn::ReplicationContext>(name, devices, whereabouts));
  for (std::size_t k = 0; k < out.modules_.size(); ++k) {
    auto modules = out.modules_[k]->named_modules();
    for (std::size_t p = 0; p < positions.size(); ++p) {
      try {
        modules[p].second->attach_replica(*out.contexts_[p], static_cast<int>(k));
      } catch (...) {
        const std::string& path = positions[p].first;
        detail::rethrow_with_context(std::current_exception(),
                                     "replicate: the replication callback of " +
                                         (path.empty() ? std::string("the root module") : "'" + path + "'") +
                                         " failed on copy " + std::to_string(k) + " (" + devices[k].str() + "): ");
      }
    }
  }
  return out;
}

}  // namespace syncbn::parallel
