// SyncBatchNorm: batch norm whose statistics exchange reaches the other
// replicas and processes (see docs/design.md, "Synchronized batch norm"),
// and the conversions between BatchNorm*d and SyncBatchNorm*d.

#include "syncbn/nn/sync_batch_norm.hpp"

#include <typeinfo>

#include "syncbn/comm/stats_exchange.hpp"
#include "syncbn/nn/replication_context.hpp"

namespace syncbn::nn {

SyncBatchNorm::SyncBatchNorm(std::string kind, int spatial_dims, std::int64_t num_features, BatchNormOptions options,
                             std::chrono::milliseconds sync_timeout,
                             std::shared_ptr<comm::ProcessGroup> process_group)
    : BatchNorm(std::move(kind), spatial_dims, num_features, options),
      timeout_(sync_timeout),
      group_(std::move(process_group)) {
  SYNCBN_CHECK(sync_timeout.count() >= 0, this->kind(), ": sync_timeout is ", sync_timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
  // Not replicated: this process's batch is the layer's part of the job's.
  if (group_ != nullptr) set_exchange(make_exchange(group_, timeout_));
}

void SyncBatchNorm::clear_cache() {
  BatchNorm::clear_cache();
  set_label(kind());
  // A copy is not wired to the other replicas until the replication
  // callback runs on it.
  copy_id_ = -1;
  if (group_ != nullptr) set_exchange(make_exchange(group_, timeout_));
}

// Note [Hierarchical exchange]
// Replicas meet at their process's master (copy 0) through the exchange's
// rendezvous; only the masters talk across processes, one collective per
// layer and pass (two for ghost batches), every rank merging in rank order
// with the same scalar code (Note [One exchange] in
// src/comm/stats_exchange.cpp). The exchange and the collectives carry the
// layer's label, so a process in another layer is named in the error.
void SyncBatchNorm::on_replicate(ReplicationContext& context, int copy_id) {
  copy_id_ = copy_id;
  set_label(kind() + (context.name().empty() ? std::string() : " '" + context.name() + "'"));  // errors name the path
  std::shared_ptr<comm::StatsExchange> exchange = make_exchange(group_, timeout_);
  if (copy_id == 0) {
    std::shared_ptr<comm::ReplicaRendezvous> rendezvous = exchange->lead_replicas(context.whereabouts());
    context.set(rendezvous);
    std::weak_ptr<comm::ReplicaRendezvous> weak = rendezvous;
    context.on_failure(
        [weak](int failed, const std::string& reason) {
          if (auto r = weak.lock()) r->abort_for(failed, reason);
        },
        [weak] {
          if (auto r = weak.lock()) r->reset();
        });
  } else {
    exchange->join_replicas(context.get<comm::ReplicaRendezvous>(label()), copy_id);
  }
  set_exchange(std::move(exchange));
}

namespace {

// Note [Conversions change all or nothing]
// A conversion decides every replacement before it makes the first: the
// walk builds the new layers (which is where a refusal is thrown) and only
// then are they put in place, so a refused conversion leaves the tree as it
// was.
struct Replacement {
  Module* parent;
  std::string name;
  std::shared_ptr<Module> with;
};

// `replace(m)` gives the module that takes m's place, null to keep m and
// look into its children, or throws to refuse the whole conversion.
template <class Replace>
void plan_replacements(Module& parent, const Replace& replace, std::vector<Replacement>& plan) {
  for (const auto& [name, child] : parent.children()) {
    if (auto with = replace(*child))
      plan.push_back(Replacement{&parent, name, std::move(with)});
    else
      plan_replacements(*child, replace, plan);
  }
}

template <class Replace>
std::shared_ptr<Module> replace_in_tree(std::shared_ptr<Module> root, const Replace& replace) {
  if (auto with = replace(*root)) return with;
  std::vector<Replacement> plan;
  plan_replacements(*root, replace, plan);
  for (Replacement& r : plan) r.parent->replace_child(r.name, std::move(r.with));
  return root;
}

std::shared_ptr<SyncBatchNorm> make_sync(const BatchNorm& bn, std::chrono::milliseconds timeout,
                                         const std::shared_ptr<comm::ProcessGroup>& group) {
  switch (bn.spatial_dims()) {
    case 1: return std::make_shared<SyncBatchNorm1d>(bn.num_features(), bn.options(), timeout, group);
    case 2: return std::make_shared<SyncBatchNorm2d>(bn.num_features(), bn.options(), timeout, group);
    default: return std::make_shared<SyncBatchNorm3d>(bn.num_features(), bn.options(), timeout, group);
  }
}

bool is_plain(const Module& m) {
  const auto& type = typeid(m);
  return type == typeid(BatchNorm1d) || type == typeid(BatchNorm2d) || type == typeid(BatchNorm3d);
}

std::shared_ptr<BatchNorm> make_plain(const SyncBatchNorm& bn) {
  switch (bn.spatial_dims()) {
    case 1: return std::make_shared<BatchNorm1d>(bn.num_features(), bn.options());
    case 2: return std::make_shared<BatchNorm2d>(bn.num_features(), bn.options());
    default: return std::make_shared<BatchNorm3d>(bn.num_features(), bn.options());
  }
}

bool is_plain_sync(const Module& m) {
  const auto& type = typeid(m);
  return type == typeid(SyncBatchNorm1d) || type == typeid(SyncBatchNorm2d) || type == typeid(SyncBatchNorm3d);
}

}  // namespace

std::shared_ptr<Module> convert_sync_batchnorm(std::shared_ptr<Module> module, std::chrono::milliseconds sync_timeout,
                                               std::shared_ptr<comm::ProcessGroup> process_group) {
  SYNCBN_CHECK(module != nullptr, "convert_sync_batchnorm: module is null, expected a module");
  SYNCBN_CHECK(sync_timeout.count() >= 0, "convert_sync_batchnorm: sync_timeout is ", sync_timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
  const auto replace = [&](Module& m) -> std::shared_ptr<Module> {
    if (is_plain(m)) {
      auto& bn = static_cast<BatchNorm&>(m);
      auto sync = make_sync(bn, sync_timeout, process_group);
      sync->take_state_of(bn);
      return sync;
    }
    // A user's subclass of BatchNorm1d/2d/3d would lose its overrides in a
    // plain SyncBatchNorm*d: refuse rather than drop them silently.
    if (const auto* bn = dynamic_cast<const BatchNorm*>(&m); bn != nullptr && dynamic_cast<const SyncBatchNorm*>(bn) == nullptr)
      SYNCBN_THROW(InvalidArgument, "convert_sync_batchnorm: ", bn->describe(), " is a subclass of ", bn->kind(),
                   ", expected BatchNorm1d, BatchNorm2d or BatchNorm3d itself (converting it would drop its "
                   "overrides; give it a synchronized version of its own); nothing was converted");
    return nullptr;
  };
  return replace_in_tree(std::move(module), replace);
}

std::shared_ptr<Module> revert_sync_batchnorm(std::shared_ptr<Module> module) {
  SYNCBN_CHECK(module != nullptr, "revert_sync_batchnorm: module is null, expected a module");
  const auto replace = [](Module& m) -> std::shared_ptr<Module> {
    if (is_plain_sync(m)) {
      auto& sync = static_cast<SyncBatchNorm&>(m);
      auto plain = make_plain(sync);
      plain->take_state_of(sync);
      return plain;
    }
    if (const auto* sync = dynamic_cast<const SyncBatchNorm*>(&m))
      SYNCBN_THROW(InvalidArgument, "revert_sync_batchnorm: ", sync->describe(), " is a subclass of ", sync->kind(),
                   ", expected SyncBatchNorm1d, SyncBatchNorm2d or SyncBatchNorm3d itself (reverting it would drop "
                   "its overrides); nothing was reverted");
    return nullptr;
  };
  return replace_in_tree(std::move(module), replace);
}

}  // namespace syncbn::nn
