#pragma once
// Data parallelism across processes: each process runs a DataParallel over
// its local devices on its part of the global batch, and the processes'
// gradients are combined through a process group (docs/design.md, "Across
// processes").

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/parallel/data_parallel.hpp"

namespace syncbn::distributed {

struct DistributedOptions {
  /// How long a collective waits for the other processes.
  std::chrono::milliseconds timeout = std::chrono::minutes{5};
  /// Copy rank 0's buffers (running statistics) to every rank before each
  /// training forward, as PyTorch's DDP does; SyncBatchNorm keeps them
  /// equal anyway, plain BatchNorm does not.
  bool broadcast_buffers = true;
  /// Options of the local DataParallel.
  parallel::DataParallelOptions local;
};

/// One model trained by every process of `group`, each on its own part of
/// the global batch over its local `devices`.
///
/// The convention (Note [Distributed gradients]): a process's loss is the
/// mean over its own samples, as syncbn's losses compute it; backward
/// scales the gradient it is given by b / B (this process's samples over
/// the global batch's) and sums the parameter gradients over the processes,
/// so that every rank holds the gradients of the mean loss over the
/// concatenated batch: P processes x K devices x b samples train exactly as
/// one device on the whole batch, also for uneven b. Batch-norm layers
/// synchronize over the processes only when converted with the group
/// (nn::convert_sync_batchnorm(module, timeout, group)).
class DistributedDataParallel {
 public:
  /// Copies rank 0's parameters and buffers to every rank (a collective
  /// over `group`). Throws InvalidArgument for a null module or group, and
  /// as DataParallel for bad devices.
  DistributedDataParallel(std::shared_ptr<nn::Module> module, std::vector<Device> devices,
                          std::shared_ptr<comm::ProcessGroup> group, DistributedOptions options = {});

  /// This process's output for its part of the batch (rank >= 1 input; an
  /// empty part is allowed where the model accepts one). In training,
  /// exchanges the parts' sizes so that every rank knows the global batch;
  /// in eval mode it is this process's alone (no collective, and no
  /// backward may follow).
  Tensor forward(const Tensor& input);
  /// Gradient of the latest forward's input; then every parameter's
  /// gradient is this step's sum over the processes added to what it held
  /// before the step.
  Tensor backward(const Tensor& grad_output);

  void train(bool on = true) { local_.train(on); }
  void eval() { train(false); }

  nn::Module& module() noexcept { return local_.module(); }
  const std::shared_ptr<comm::ProcessGroup>& group() const noexcept { return group_; }
  /// The samples of the latest forward over every process (B), and this
  /// process's (b).
  std::int64_t global_batch() const noexcept { return global_batch_; }
  std::int64_t local_batch() const noexcept { return local_batch_; }

 private:
  void broadcast_state(bool parameters, bool buffers, const char* why);
  void sum_gradients();

  parallel::DataParallel local_;
  std::shared_ptr<comm::ProcessGroup> group_;
  DistributedOptions options_;
  std::int64_t global_batch_ = 0;
  std::int64_t local_batch_ = 0;
  bool has_forward_ = false;
};

}  // namespace syncbn::distributed
