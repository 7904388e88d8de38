#pragma once
// DataParallel: replicate a module across local devices, scatter each batch,
// run every replica in its own persistent thread, gather the outputs, and
// bring the gradients home.

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "syncbn/comm/collectives.hpp"
#include "syncbn/nn/forward_transaction.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/parallel/replicate.hpp"

namespace syncbn::parallel {

using comm::gather;
using comm::scatter;

/// Options of DataParallel.
struct DataParallelOptions {
  /// Allow a device more than once: several logical replicas sharing one GPU
  /// (how multi-replica code is exercised on a single-GPU machine). Off by
  /// default, where a repeated device is an error.
  bool allow_shared_devices = false;
};

/// Data parallelism over local devices for a module the caller owns.
///
/// forward(x): the replicas (made once, and again only when the module tree
/// or a parameter's storage changes) get the module's current parameters and
/// buffers (aliased where memory is shared, copied otherwise), x is scattered
/// along dimension 0 (even_chunk_sizes: a batch smaller than the number of
/// devices gives empty shards), each replica runs forward in its own worker
/// thread, and the outputs are gathered on the output device. Replica 0's
/// buffers (e.g. running statistics) land in the module.
///
/// backward(dy): dy is scattered by the rows each replica's output had (its
/// input's for a per-sample model; a module's output may have other rows, as
/// on one device), every replica runs
/// backward in its thread, and every parameter gradient is reduce-added (in
/// replica order, float64) into the module's own gradients, which accumulate
/// like a single-device backward: an optimizer on the module just works.
/// Returns dL/dx gathered on the forward input's device.
///
/// One device runs the module inline: no threads, no copies.
///
/// Failures: an exception in any replica is rethrown from forward/backward
/// with the replica and device in its message (same exception type for
/// syncbn errors); every other replica is released (rendezvous aborted) and
/// joined; the object stays usable for the next step.
///
/// A step is all or nothing (Note [Step guarantees] in docs/design.md): when
/// forward, or the backward that follows it, throws, every parameter,
/// gradient and buffer of the module is as it was before that forward, so
/// the step can be retried. This costs a copy of the module's buffers per
/// forward and, on one device, a copy of its gradients per backward.
///
/// Thread safety: one thread drives a DataParallel at a time.
class DataParallel {
 public:
  /// Throws InvalidArgument for a null module, an empty device list, a
  /// repeated device (unless options.allow_shared_devices), or a module
  /// whose parameters or buffers are not on devices[0]; unavailable devices
  /// throw as Device::check_available. output_device defaults to devices[0].
  DataParallel(std::shared_ptr<nn::Module> module, std::vector<Device> devices,
               std::optional<Device> output_device = std::nullopt, DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  /// The output for the whole batch, on the output device. The input must
  /// have rank >= 1 and live on devices[0] or in host memory.
  Tensor forward(const Tensor& input);
  /// Gradient of the latest forward's input; grad_output has the output's shape.
  Tensor backward(const Tensor& grad_output);

  /// Training mode of the module (and so of the replicas).
  void train(bool on = true);
  void eval() { train(false); }

  nn::Module& module() noexcept { return *module_; }
  const std::vector<Device>& devices() const noexcept { return devices_; }
  Device output_device() const noexcept { return output_device_; }
  /// How many times replicas were made (1 after the first multi-device
  /// forward while the module's structure stays the same).
  std::uint64_t replication_count() const noexcept { return replications_; }

 private:
  struct Workers;
  void check_module_device() const;
  void ensure_replicas();
  void refresh_replicas();
  void write_back_buffers();
  Tensor gather_outputs(const std::vector<Tensor>& outputs);
  void run_on_replicas(const char* phase, const std::function<void(int)>& task);
  void zero_replica_grads();
  Tensor backward_step(const Tensor& grad_output);

  std::shared_ptr<nn::Module> module_;
  std::vector<Device> devices_;
  Device output_device_;
  DataParallelOptions options_;
  std::unique_ptr<Workers> workers_;
  Replication replication_;
  std::size_t fingerprint_ = 0;
  std::uint64_t replications_ = 0;
  // The latest forward, for backward.
  bool has_forward_ = false;
  // The module's buffers before the current step's forward, restored when
  // the step fails (Note [Step guarantees]); empty once the step completed.
  std::vector<Tensor> buffers_before_step_;
  // How to undo the state the step's forward changed beyond the buffers
  // (Note [All-or-nothing forward]); emptied once the step completed.
  nn::UndoRecords step_undo_;
  // The rows of each replica's output in the latest forward, by which
  // backward scatters grad_output.
  std::vector<std::int64_t> output_rows_;
  Device input_device_;
  Shape output_shape_;
};

/// Runs replicas[i].forward(inputs[i]) for every i, each in its own thread,
/// waits for them all, and returns the outputs. The threads are started by
/// the first call on `replicas` and kept with them for later calls (replica
/// i always on the same thread), as DataParallel keeps its own. On a
/// failure the other replicas are released (replicas.abort), every task has
/// returned, the rendezvous are reset, and the first failure is rethrown
/// naming the replica and device.
std::vector<Tensor> parallel_apply(Replication& replicas, const std::vector<Tensor>& inputs);

/// Like parallel_apply for backward: grad_inputs[i] = replicas[i].backward(grad_outputs[i]).
std::vector<Tensor> parallel_backward(Replication& replicas, const std::vector<Tensor>& grad_outputs);

}  // namespace syncbn::parallel
