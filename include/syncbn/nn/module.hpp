#pragma once
// Module: the base of every layer. Named parameters (value + gradient),
// named buffers, named children, train/eval, layer-wise forward/backward,
// deep copies, and the replication hook.

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "syncbn/core/device.hpp"
#include "syncbn/core/tensor.hpp"

namespace syncbn::nn {

class ReplicationContext;

/// A learnable tensor and its gradient (same shape, dtype and device).
/// backward() accumulates into grad; zero_grad() clears it.
///
/// A module owns its Parameter objects through shared pointers, and the
/// objects keep their identity for the module's life and across
/// convert_sync_batchnorm (the synchronized layer takes over the very
/// objects), so an optimizer holding Parameter pointers keeps working.
/// Copies of a module (clone, clone_structure, replicas) have their own.
struct Parameter {
  Tensor value;
  Tensor grad;
};

/// Base of every layer.
///
/// Backward is layer-wise: forward(x) keeps what backward needs (the input,
/// the output or statistics); backward(dy) returns dL/dx for the latest
/// forward and adds dL/dparameter into the parameters' grad. There is no
/// general autograd: a model is a tree of modules whose backward mirrors its
/// forward (see Sequential).
///
/// Copies: clone() is a deep copy; clone_structure() copies the tree of
/// modules but shares every tensor (replicate() then decides per tensor
/// whether a replica aliases or copies it). A module type makes itself
/// copyable by deriving from Cloneable<Type>.
///
/// Thread safety: a module is used by one thread at a time.
class Module {
 public:
  virtual ~Module() = default;
  Module& operator=(const Module&) = delete;

  /// Type and options, e.g. "Linear(in_features=4, out_features=3, bias=true)";
  /// used at the start of error messages.
  virtual std::string describe() const = 0;
  /// Computes the output and keeps what backward needs.
  virtual Tensor forward(const Tensor& input) = 0;
  /// dL/dinput for the latest forward given dL/doutput; accumulates
  /// parameter gradients. Throws InvalidArgument without a prior forward or
  /// for a grad_output whose shape differs from the output's.
  virtual Tensor backward(const Tensor& grad_output) = 0;
  /// The replication callback: called once on every copy made by
  /// parallel::replicate, with one context per module position shared by
  /// all copies of this module, copy 0 (the master) first. Default: nothing.
  virtual void on_replicate(ReplicationContext& context, int copy_id);

  /// Called by parallel::replicate on every module of copy `copy_id`:
  /// records that this module belongs to that copy (replica_id()), then
  /// runs on_replicate.
  void attach_replica(ReplicationContext& context, int copy_id);
  /// The copy of a replicated model this module belongs to; -1 for a
  /// module that is not a replica (the user's own model).
  int replica_id() const noexcept { return replica_id_; }

  /// Parameters of this module and its descendants, named by dotted path
  /// ("0.weight"), in registration order (pre-order).
  std::vector<std::pair<std::string, Parameter*>> named_parameters();
  std::vector<Parameter*> parameters();
  /// Buffers (e.g. running statistics), named like parameters.
  std::vector<std::pair<std::string, Tensor*>> named_buffers();
  /// This module ("") and every descendant, pre-order, named by dotted path.
  std::vector<std::pair<std::string, Module*>> named_modules();
  /// Direct children in registration order.
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const noexcept { return children_; }
  /// Replaces the direct child `name` (same position); InvalidArgument if
  /// there is none or `child` is null.
  void replace_child(const std::string& name, std::shared_ptr<Module> child);

  /// Sets training mode on this module and its descendants.
  void train(bool on = true);
  /// train(false).
  void eval() { train(false); }
  bool is_training() const noexcept { return training_; }

  /// Sets every parameter gradient to zero.
  void zero_grad();
  /// Moves parameters, gradients and buffers to `device` (a copy each).
  void to(Device device);

  /// A deep copy: same types, options and training mode; parameters (with
  /// gradients) and buffers copied.
  std::shared_ptr<Module> clone() const;
  /// A copy of the module tree whose tensors are shared with this one.
  std::shared_ptr<Module> clone_structure() const;

 protected:
  Module() = default;
  /// Shallow: tensors and children shared (clone_structure deepens children).
  Module(const Module&) = default;

  /// Registers a parameter (its gradient starts at zero); returns its index.
  std::size_t register_parameter(const std::string& name, Tensor value);
  /// Registers a buffer (a tensor that is state but not learned); returns its index.
  std::size_t register_buffer(const std::string& name, Tensor value);
  /// Registers a child; returns its index.
  std::size_t register_module(const std::string& name, std::shared_ptr<Module> child);

  Parameter& parameter(std::size_t index) { return *params_[index].second; }
  const Parameter& parameter(std::size_t index) const { return *params_[index].second; }
  /// Makes parameter `index` the very object `source` (another module's,
  /// e.g. the layer a conversion replaces): pointers to it stay valid.
  void share_parameter(std::size_t index, std::shared_ptr<Parameter> source);
  /// The shared object behind parameter `index`.
  const std::shared_ptr<Parameter>& parameter_object(std::size_t index) const { return params_[index].second; }
  Tensor& buffer(std::size_t index) { return buffers_[index].second; }
  const Tensor& buffer(std::size_t index) const { return buffers_[index].second; }
  Module& child(std::size_t index) { return *children_[index].second; }
  /// Child `index` as its type T (the way for a module to reach a child it
  /// registered: copies of the module, such as replicas, reach their own
  /// copy of the child, where a member pointer would still point to the
  /// original's).
  template <class T>
  T& child_as(std::size_t index) {
    return dynamic_cast<T&>(child(index));
  }
  std::size_t child_count() const noexcept { return children_.size(); }

  /// Throws InvalidArgument when the calling thread runs a copy of a
  /// replicated model other than the one this module belongs to (Note
  /// [Replica threads] in replication_context.hpp). The built-in layers call
  /// it first in forward and backward.
  void check_replica_thread() const;

  /// A copy of this object made by its copy constructor (Cloneable provides it).
  virtual std::shared_ptr<Module> shallow_copy() const = 0;
  /// Drops what forward kept for backward (copies start without it).
  virtual void clear_cache() {}

 private:
  void collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Parameter*>>& out);
  void collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, Tensor*>>& out);
  void collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out);

  std::vector<std::pair<std::string, std::shared_ptr<Parameter>>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  int replica_id_ = -1;
};

/// Gives a module type its shallow_copy (through its copy constructor).
template <class Derived, class Base = Module>
class Cloneable : public Base {
 public:
  using Base::Base;

 protected:
  std::shared_ptr<Module> shallow_copy() const override {
    return std::make_shared<Derived>(static_cast<const Derived&>(*this));
  }
};

/// Derives a seed for a sub-stream (e.g. a layer's bias from its weight's seed).
std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream);

}  // namespace syncbn::nn
