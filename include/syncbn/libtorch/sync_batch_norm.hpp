#pragma once
// Synchronized batch norm for torch::nn C++ models: SyncBatchNorm1d/2d/3d,
// drop-in modules with the options, parameter and buffer names of
// torch::nn::BatchNorm1d/2d/3d, whose training statistics are those of the
// whole batch across the replicas of a runner and, with a process group,
// across processes. The statistics go through syncbn's exchange
// (comm::StatsExchange) and are computed by syncbn's batch-norm stages on
// views of the torch tensors' memory (docs/design.md, "The libtorch bridge").

#include <chrono>
#include <cstddef>
#include <memory>
#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/options/batchnorm.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "syncbn/comm/process_group.hpp"
#include "syncbn/comm/stats_exchange.hpp"
#include "syncbn/sync/sync_master.hpp"

namespace syncbn::libtorch {

/// What a SyncBatchNorm adds to torch::nn::BatchNormOptions: how long a
/// replica waits for the others in one exchange, and the processes to
/// synchronize with beyond this one (null: this process's replicas only).
struct SyncOptions {
  std::chrono::milliseconds timeout = sync::kDefaultSyncTimeout;
  std::shared_ptr<comm::ProcessGroup> process_group = nullptr;
};

/// What every SyncBatchNorm module holds beside its torch state: its sync
/// options and the exchanges its statistics go through (how a runner finds
/// and links the synchronized layers of its replicas, whatever their kind).
class Synchronized {
 public:
  virtual ~Synchronized() = default;

  const SyncOptions& sync_options() const noexcept { return sync_; }
  /// The exchange of the training statistics: this module's own (with the
  /// process group, if any) until a runner links it with the replicas'.
  const std::shared_ptr<comm::StatsExchange>& exchange() const noexcept { return exchange_; }
  void set_exchange(std::shared_ptr<comm::StatsExchange> exchange) { exchange_ = std::move(exchange); }
  /// The layer's name in errors and collectives, e.g. "SyncBatchNorm2d(64)".
  virtual std::string label() const = 0;
  /// A fresh exchange of this module's layer alone (with its process group).
  std::shared_ptr<comm::StatsExchange> make_exchange(bool with_processes) const;
  virtual std::int64_t channels() const noexcept = 0;
  /// The training forwards this module ran (since it was built, cloned or reset).
  std::int64_t training_forwards() const noexcept { return training_forwards_; }

 protected:
  explicit Synchronized(SyncOptions sync) : sync_(std::move(sync)) {}
  Synchronized(const Synchronized&) = default;
  Synchronized& operator=(const Synchronized&) = default;

  SyncOptions sync_;
  std::shared_ptr<comm::StatsExchange> exchange_;      // training
  std::shared_ptr<comm::StatsExchange> own_exchange_;  // eval without running statistics: this replica alone
  std::int64_t training_forwards_ = 0;
};

/// The module shared by SyncBatchNorm1d/2d/3d; `Derived` is the concrete
/// module (torch::nn::Cloneable needs it to clone the right type) and names
/// its kind (kKind) and number of spatial dimensions (kSpatialDims).
///
/// Training normalises with the statistics of the whole batch: every
/// replica's (count, mean, M2) per channel, merged in replica order in
/// float64 (Chan's update), then across processes in rank order, so every
/// replica and rank gets the same bits; the backward exchanges the sums
/// (sum(dy), sum(dy * (x - mean))) when the input needs a gradient. Eval
/// normalises with the running statistics (or, without them, the replica's
/// own batch) and never exchanges. The weight and bias gradients are each
/// replica's own part: the runner sums them. The running statistics are
/// updated by replica 0 (or the module itself when not replicated), as
/// torch::nn::BatchNorm updates them, momentum none being the cumulative
/// average; a runner brings the other replicas' buffers in step.
///
/// Input: float32 or float64, or float16/bfloat16 with float32 parameters
/// and statistics; CPU tensors (this build's libtorch; syncbn's own
/// layers run on CUDA).
template <class Derived>
class SyncBatchNormImplBase : public torch::nn::Cloneable<Derived>, public Synchronized {
 public:
  explicit SyncBatchNormImplBase(const torch::nn::BatchNormOptions& options, SyncOptions sync = {});

  /// (Re)creates the parameters and buffers, as torch::nn::BatchNorm does,
  /// and fresh exchanges of this module alone.
  void reset() override;
  void reset_running_stats();
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& input);

  std::string label() const override;
  std::int64_t channels() const noexcept override { return options.num_features(); }

  torch::nn::BatchNormOptions options;
  torch::Tensor weight;
  torch::Tensor bias;
  torch::Tensor running_mean;
  torch::Tensor running_var;
  torch::Tensor num_batches_tracked;

 private:
  void check_input(const torch::Tensor& input) const;
};

/// Synchronized BatchNorm1d: input (N, C) or (N, C, L).
class SyncBatchNorm1dImpl : public SyncBatchNormImplBase<SyncBatchNorm1dImpl> {
 public:
  using SyncBatchNormImplBase<SyncBatchNorm1dImpl>::SyncBatchNormImplBase;

  static constexpr int kSpatialDims = 1;
  static constexpr const char* kKind = "SyncBatchNorm1d";
};

/// Synchronized BatchNorm2d: input (N, C, H, W).
class SyncBatchNorm2dImpl : public SyncBatchNormImplBase<SyncBatchNorm2dImpl> {
 public:
  using SyncBatchNormImplBase<SyncBatchNorm2dImpl>::SyncBatchNormImplBase;

  static constexpr int kSpatialDims = 2;
  static constexpr const char* kKind = "SyncBatchNorm2d";
};

/// Synchronized BatchNorm3d: input (N, C, D, H, W).
class SyncBatchNorm3dImpl : public SyncBatchNormImplBase<SyncBatchNorm3dImpl> {
 public:
  using SyncBatchNormImplBase<SyncBatchNorm3dImpl>::SyncBatchNormImplBase;

  static constexpr int kSpatialDims = 3;
  static constexpr const char* kKind = "SyncBatchNorm3d";
};

TORCH_MODULE(SyncBatchNorm1d);
TORCH_MODULE(SyncBatchNorm2d);
TORCH_MODULE(SyncBatchNorm3d);

extern template class SyncBatchNormImplBase<SyncBatchNorm1dImpl>;
extern template class SyncBatchNormImplBase<SyncBatchNorm2dImpl>;
extern template class SyncBatchNormImplBase<SyncBatchNorm3dImpl>;

/// Links the synchronized batch norms of `replicas` (clones of one module,
/// replica 0 first): the k-th SyncBatchNorm of every replica, in the order
/// of Module::modules(), shares one exchange among the replicas, replica 0
/// merging. Returns one rendezvous per linked layer, for the runner to
/// release when a replica fails (ReplicaRendezvous::abort_for).
/// InvalidArgument when the replicas differ in their synchronized layers.
std::vector<std::shared_ptr<comm::ReplicaRendezvous>> synchronize_replicas(
    const std::vector<std::shared_ptr<torch::nn::Module>>& replicas);

}  // namespace syncbn::libtorch
