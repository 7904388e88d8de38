#pragma once
// replicate(): one copy of a module per device, wired together through the
// replication callback (Module::on_replicate).

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/core/device.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/nn/replication_context.hpp"

namespace syncbn::sync {
class WorkerPool;
}

namespace syncbn::parallel {


/// The replicas made by replicate(), with their shared contexts.
class Replication {
 public:
  Replication() = default;
  std::size_t size() const noexcept { return modules_.size(); }
  bool empty() const noexcept { return modules_.empty(); }
  /// Replica i (on devices()[i]).
  nn::Module& operator[](std::size_t i) { return *modules_.at(i); }
  const std::vector<std::shared_ptr<nn::Module>>& modules() const noexcept { return modules_; }
  const std::vector<Device>& devices() const noexcept { return devices_; }

  /// Releases every replica blocked in a rendezvous of these replicas
  /// because replica `failed` failed with `reason`. Never throws.
  void abort(int failed, const std::string& reason) noexcept;
  /// Makes every rendezvous usable again; call when no replica is running.
  void reset();

  /// True when the latest parallel_apply on these replicas succeeded (and
  /// no parallel_backward failed since): what parallel_backward requires
  /// (both in syncbn/parallel/data_parallel.hpp).
  bool has_forward() const noexcept { return has_forward_; }

 private:
  friend Replication replicate(nn::Module& module, const std::vector<Device>& devices);
  friend std::vector<Tensor> parallel_apply(Replication& replicas, const std::vector<Tensor>& inputs);
  friend std::vector<Tensor> parallel_backward(Replication& replicas, const std::vector<Tensor>& grad_outputs);
  // The replica threads of parallel_apply and parallel_backward: started by
  // the first call and kept with the replicas, so that each call does not
  // start and join K threads (whose heaps glibc trimmed and refaulted on
  // every step). A copy of a Replication starts its own.
  struct Threads {
    Threads() = default;
    Threads(const Threads&) noexcept {}
    Threads& operator=(const Threads&) noexcept {
      pool.reset();
      return *this;
    }
    Threads(Threads&&) noexcept = default;
    Threads& operator=(Threads&&) noexcept = default;
    ~Threads() = default;
    std::shared_ptr<sync::WorkerPool> pool;
  };
  sync::WorkerPool& worker_pool();
  Threads threads_;
  bool has_forward_ = false;
  std::vector<std::shared_ptr<nn::Module>> modules_;
  std::vector<Device> devices_;
  std::vector<std::shared_ptr<nn::ReplicationContext>> contexts_;
};

/// One copy of `module` per device, then the replication callback.
///
/// Copy k is a copy of the module tree for devices[k]: a parameter aliases
/// the module's own tensor where the memory is shared (any CPU device for a
/// CPU module, the same GPU) and is a copy otherwise; every copy has its own
/// zeroed gradients; buffers of copy 0 alias the module's where the memory is
/// shared, all other buffers are copies. Then, for every copy k in order and
/// every module position p of it (pre-order), on_replicate(context_p, k) is
/// called: one context per position shared by all copies, copy 0 first.
///
/// Throws InvalidArgument for an empty device list; a device that is not
/// available throws as Device::check_available does. Duplicate devices are
/// allowed here (logical replicas sharing a GPU); DataParallel checks its own rule.
Replication replicate(nn::Module& module, const std::vector<Device>& devices);

}  // namespace syncbn::parallel
