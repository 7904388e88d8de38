#pragma once
// DistributedDataParallel for torch::nn models: P processes (e.g. under
// mpirun, syncbn::distributed::MpiSession's group) each run a
// libtorch::DataParallel over K replicas on their part of every global
// batch; the synchronized batch norms exchange within the process and then
// across the processes (hierarchical), and the gradients are summed across
// the processes after each step, so every rank takes the same optimizer
// step as one device on the global batch.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/libtorch/data_parallel.hpp"
#include "syncbn/sync/sync_master.hpp"

namespace syncbn::libtorch {

class DistributedDataParallel {
 public:
  struct Options {
    /// Replicas in this process (threads), as DataParallel's.
    int replicas = 1;
    int intra_op_threads = 0;
    /// How long a rank waits for the others in one collective.
    std::chrono::milliseconds timeout = sync::kDefaultSyncTimeout;
    /// Gradient values per all-reduce (float64 on the wire).
    std::size_t bucket_values = std::size_t{1} << 18;
    /// As DataParallel::Options::make_replica.
    std::function<std::shared_ptr<torch::nn::Module>()> make_replica = nullptr;
    /// As DataParallel::Options::devices: this process's replicas' devices.
    std::vector<torch::Device> devices = {};
  };

  /// Brings rank 0's parameters and buffers to every rank (a collective:
  /// every rank constructs with the same model). Every SyncBatchNorm of
  /// `module` must synchronize over `group` (convert_sync_batchnorm(module,
  /// {.process_group = group}) or SyncOptions at construction): a layer of
  /// another group, or of none, is refused by name.
  DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<comm::ProcessGroup> group,
                          Options options);

  /// One training step on this rank's part of the global batch (any number
  /// of rows, 0 included; every rank calls it for every batch). Returns
  /// the global batch's mean loss, the same on every rank; the module's
  /// gradients grow by the global batch's, the same on every rank.
  double step(const torch::Tensor& input, const torch::Tensor& target, const ReplicaLoss& loss);

  const std::shared_ptr<torch::nn::Module>& module() const noexcept { return runner_.module(); }
  DataParallel& runner() noexcept { return runner_; }

 private:
  void reduce_gradients(std::vector<torch::Tensor>& gradients) const;

  std::shared_ptr<comm::ProcessGroup> group_;
  Options options_;
  DataParallel runner_;
};

}  // namespace syncbn::libtorch
