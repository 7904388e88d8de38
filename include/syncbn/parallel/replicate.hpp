#pragma once
// replicate(): one copy of a module per device, wired together through the
// replication callback (Module::on_replicate).

#include <any>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "syncbn/core/device.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/module.hpp"

namespace syncbn::parallel {

/// Shared by all copies of one module position during replicate(): copy 0
/// (the master, called first) typically stores an object here (e.g. a
/// SyncMaster) that the other copies then connect to. Layers that block in a
/// rendezvous also register how to release it when a replica fails.
class ReplicationContext {
 public:
  ReplicationContext(std::string name, std::vector<Device> devices)
      : name_(std::move(name)), devices_(std::move(devices)) {}

  /// The module position's dotted path in the replicated tree ("" for the
  /// root), for error messages such as a rendezvous's timeout.
  const std::string& name() const noexcept { return name_; }
  /// Number of copies being made.
  int copies() const noexcept { return static_cast<int>(devices_.size()); }
  /// The device of copy `copy_id`.
  Device device(int copy_id) const { return devices_.at(static_cast<std::size_t>(copy_id)); }

  /// Stores the position's shared object (replacing any earlier one).
  template <class T>
  void set(std::shared_ptr<T> value) {
    value_ = std::move(value);
  }
  /// The shared object; InvalidArgument naming `who` when none of type T was set.
  template <class T>
  std::shared_ptr<T> get(const std::string& who) const {
    const auto* value = std::any_cast<std::shared_ptr<T>>(&value_);
    SYNCBN_CHECK(value != nullptr && *value != nullptr, who,
                 ": the replication context holds no shared object of the expected type; was copy 0 replicated "
                 "first?");
    return *value;
  }

  /// Registers how to release replicas blocked in this position's
  /// rendezvous when replica `failed` fails elsewhere (abort), and how to
  /// make the rendezvous usable again once every replica is idle (reset).
  void on_failure(std::function<void(int failed, const std::string& reason)> abort, std::function<void()> reset) {
    handlers_.push_back({std::move(abort), std::move(reset)});
  }

  /// Runs the abort handlers; never throws.
  void abort(int failed, const std::string& reason) noexcept;
  /// Runs the reset handlers.
  void reset();

 private:
  struct Handlers {
    std::function<void(int, const std::string&)> abort;
    std::function<void()> reset;
  };
  std::string name_;
  std::vector<Device> devices_;
  std::any value_;
  std::vector<Handlers> handlers_;
};

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

 private:
  friend Replication replicate(nn::Module& module, const std::vector<Device>& devices);
  std::vector<std::shared_ptr<nn::Module>> modules_;
  std::vector<Device> devices_;
  std::vector<std::shared_ptr<ReplicationContext>> contexts_;
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
