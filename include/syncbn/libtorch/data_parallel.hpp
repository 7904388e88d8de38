#pragma once
// DataParallel for torch::nn models: K replicas cloned once and kept, one
// thread per replica running forward + loss + backward on its shard, the
// replicas' synchronized batch norms exchanging inside forward and
// backward, and the gradients summed onto the module in replica order.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "syncbn/comm/stats_exchange.hpp"
#include "syncbn/sync/sync_master.hpp"
#include "syncbn/sync/worker_pool.hpp"

namespace syncbn::libtorch {

/// One replica's share of a step: its module (a clone of the user's), its
/// rows of the input and of the target. Returns the replica's loss, the
/// mean over its rows (a scalar with a gradient).
using ReplicaLoss =
    std::function<torch::Tensor(torch::nn::Module& replica, const torch::Tensor& input, const torch::Tensor& target)>;

/// Runs training steps of `module` over K replicas, on the CPU or on GPUs.
///
/// The replicas are clones of the module made at construction and kept;
/// each step copies the module's parameters and buffers into them (so an
/// optimizer steps the module itself), splits the batch along dimension 0
/// (near-equal shards; a replica may get none), and runs each replica's
/// forward, loss and backward on a thread of its own (kept from step to
/// step), with the caller's
/// thread-local state (grad mode and the like). Each replica's loss is
/// weighted by its share of the rows, so the summed gradients are those of
/// the mean loss over the whole batch whatever the split; they are added
/// to the module's gradients in replica order (deterministic), and replica
/// 0's buffers (the running statistics its synchronized batch norms
/// updated) become the module's. A replica that throws fails the step on
/// every replica (the exchanges are released, nothing waits for it), and
/// the step throws naming the replica; the module, its gradients and its
/// buffers are then as they were before the step.
///
/// Every BatchNorm of the module must be synchronized (check_synchronized
/// at construction; check_layers_ran after the first step). Each replica
/// thread uses `intra_op_threads` ATen threads: by default the machine's
/// cores / K, at least 1. Replicas on GPUs (Options::devices) get their
/// shard copied there and their gradients summed back onto the module's
/// device (docs/usage.md, "With libtorch": Debian's libtorch has no CUDA,
/// so that path is built everywhere but runs only with a CUDA libtorch).
class DataParallel {
 public:
  struct Options {
    int replicas = 2;
    /// ATen threads per replica thread; 0: hardware cores / replicas (>= 1).
    int intra_op_threads = 0;
    /// Builds a new model of the module's structure, for a module that is
    /// not a torch::nn::Cloneable (whose clone() libtorch refuses); the
    /// replicas then take the module's values. Empty: module->clone().
    std::function<std::shared_ptr<torch::nn::Module>()> make_replica = nullptr;
    /// Where each replica runs (the CPU, or cuda:i), one per replica;
    /// empty: every replica on the CPU.
    std::vector<torch::Device> devices = {};
  };

  DataParallel(std::shared_ptr<torch::nn::Module> module, Options options);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  /// One training step on the batch (input, target: the same number of
  /// rows); returns the mean loss over the batch (a value, no gradient).
  /// The module's gradients grow by the batch's: zero them between steps.
  double step(const torch::Tensor& input, const torch::Tensor& target, const ReplicaLoss& loss);

  /// How a step that is part of a larger batch goes (DistributedDataParallel).
  struct Part {
    /// The rows of the whole batch (>= the input's, which may be 0): each
    /// replica's loss is weighted by its rows / batch_rows.
    std::int64_t batch_rows = 0;
    /// Called with the step's gradients summed over the replicas (one per
    /// parameter of the module, in parameters() order; zeros where none
    /// arrived) before they are added to the module's: e.g. a sum across
    /// processes. What it throws fails the step, the module unchanged.
    std::function<void(std::vector<torch::Tensor>& gradients)> reduce = nullptr;
  };
  /// The step as part of a larger batch; returns this part's share of the
  /// batch's mean loss.
  double step(const torch::Tensor& input, const torch::Tensor& target, const ReplicaLoss& loss, const Part& part);

  const std::shared_ptr<torch::nn::Module>& module() const noexcept { return module_; }
  /// The replicas (clones of the module); replica k runs shard k.
  const std::vector<std::shared_ptr<torch::nn::Module>>& replicas() const noexcept { return replicas_; }
  int intra_op_threads() const noexcept { return intra_op_threads_; }
  /// Where each replica runs.
  const std::vector<torch::Device>& devices() const noexcept { return devices_; }

 private:
  void refresh_replicas();
  std::vector<torch::Tensor> summed_gradients() const;
  void take_results(const std::vector<torch::Tensor>& gradients);

  std::shared_ptr<torch::nn::Module> module_;
  std::vector<std::shared_ptr<torch::nn::Module>> replicas_;
  std::vector<std::shared_ptr<comm::ReplicaRendezvous>> rendezvous_;
  std::vector<torch::Device> devices_;
  int intra_op_threads_ = 1;
  std::int64_t steps_ = 0;
  std::unique_ptr<sync::WorkerPool> pool_;  // last: its threads use the members above
};

}  // namespace syncbn::libtorch
