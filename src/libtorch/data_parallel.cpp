// DataParallel for torch::nn models: persistent replicas, each on a thread
// of its own kept across steps (Note [The bridge's replica threads]).

#include "syncbn/libtorch/data_parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <string>
#include <functional>
#include <thread>
#include <utility>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/DeviceGuard.h>
#include <torch/cuda.h>

#include "module_state.hpp"
#include "syncbn/core/device.hpp"
#include "syncbn/error.hpp"
#include "syncbn/libtorch/convert.hpp"
#include "syncbn/libtorch/sync_batch_norm.hpp"
#include "syncbn/sync/worker_pool.hpp"

namespace syncbn::libtorch {
namespace {

// Note [The bridge's replica threads]
// Each replica runs forward, loss and backward on a thread of its own: its
// synchronized batch norms wait inside forward and inside backward for the
// other replicas' (a single backward over every replica's loss would wait
// for itself). The threads are a sync::WorkerPool's, kept from step to step
// as syncbn's own DataParallel keeps its workers: a new thread per step
// would also start a new OpenMP team and malloc arena for ATen every step.
// A thread that is not the caller's starts with default thread-local state
// (grad mode, autocast, profiler), so each task installs the caller's; and
// each worker sets cores / K ATen threads once when it starts, so that the
// K replicas together use the machine's cores without oversubscribing them
// (at::set_num_threads also sizes libtorch's process-wide pthreadpool, which
// only its QNNPACK/XNNPACK kernels use; the caller's own thread keeps its
// OpenMP setting, since the replicas never run on it). The replicas are
// clones: the module itself is touched only once every replica succeeded
// (gradients summed in replica order, replica 0's buffers), so a failed step
// leaves it as it was.

int default_intra_op_threads(int replicas) {
  const unsigned cores = std::thread::hardware_concurrency();
  return std::max(1, static_cast<int>(cores == 0 ? 1 : cores) / replicas);
}

// An exception's message; libtorch's without its C++ backtrace.
std::string message_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

}  // namespace

DataParallel::DataParallel(std::shared_ptr<torch::nn::Module> module, Options options)
    : module_(std::move(module)) {
  constexpr const char* op = "DataParallel";
  SYNCBN_CHECK(module_ != nullptr, op, ": the module is null, expected a module");
  SYNCBN_CHECK(options.replicas >= 1 && options.replicas <= core::kMaxReplicas, op, ": ", options.replicas,
               " replicas, expected 1 to ", core::kMaxReplicas);
  SYNCBN_CHECK(options.intra_op_threads >= 0, op, ": intra_op_threads ", options.intra_op_threads,
               ", expected >= 0 (0: cores / replicas)");
  check_synchronized(*module_, op);
  devices_ = options.devices.empty() ? std::vector<torch::Device>(static_cast<std::size_t>(options.replicas), torch::kCPU)
                                     : options.devices;
  SYNCBN_CHECK(devices_.size() == static_cast<std::size_t>(options.replicas), op, ": ", devices_.size(),
               " devices for ", options.replicas, " replicas, expected one per replica (or none: the CPU)");
  for (std::size_t k = 0; k < devices_.size(); ++k) {
    const torch::Device& d = devices_[k];
    SYNCBN_CHECK(d.is_cpu() || (d.is_cuda() && d.has_index()), op, ": replica ", k, " on ", d.str(),
                 ", expected the CPU or a GPU with its index (cuda:i)");
    SYNCBN_CHECK(d.is_cpu() || d.index() < static_cast<int>(torch::cuda::device_count()), op, ": replica ", k, " on ",
                 d.str(), ", expected a GPU this libtorch sees (", torch::cuda::device_count(), " GPUs",
                 torch::cuda::is_available() ? "" : "; this libtorch has no CUDA", ")");
  }
  intra_op_threads_ =
      options.intra_op_threads > 0 ? options.intra_op_threads : default_intra_op_threads(options.replicas);
  for (int k = 0; k < options.replicas; ++k) {
    std::shared_ptr<torch::nn::Module> replica;
    if (options.make_replica) {
      replica = options.make_replica();
      SYNCBN_CHECK(replica != nullptr && replica.get() != module_.get(), op, ": make_replica returned ",
                   replica == nullptr ? "null" : "the module itself", ", expected a new model");
    } else {
      try {
        replica = module_->clone();
      } catch (const c10::Error& e) {
        SYNCBN_THROW(InvalidArgument, op, ": the module cannot be cloned (", e.what_without_backtrace(),
                     "), expected a torch::nn::Cloneable module or Options::make_replica");
      }
    }
    replicas_.push_back(std::move(replica));
  }
  // The replicas have the module's parameters and buffers, by name; they
  // take their dtypes and values (a made replica starts in float32).
  for (const auto& replica : replicas_) {
    for (const bool params : {true, false}) {
      const auto mine = params ? module_->named_parameters() : module_->named_buffers();
      auto theirs = params ? replica->named_parameters() : replica->named_buffers();
      SYNCBN_CHECK(mine.size() == theirs.size(), op, ": a replica has ", theirs.size(),
                   params ? " parameters" : " buffers", ", expected ", mine.size(), " as the module");
      for (const auto& item : mine)
        SYNCBN_CHECK(theirs.contains(item.key()) && theirs[item.key()].sizes() == item.value().sizes(), op,
                     ": a replica has no ", params ? "parameter '" : "buffer '", item.key(),
                     "' of the module's shape, expected the module's structure");
    }
  }
  for (std::size_t k = 0; k < replicas_.size(); ++k) {
    replicas_[k]->to(devices_[k]);
    detail::carry_state(*module_, *replicas_[k]);  // on the replica's device
  }
  rendezvous_ = synchronize_replicas(replicas_);
  pool_ = std::make_unique<sync::WorkerPool>(options.replicas,
                                             [threads = intra_op_threads_](int) { at::set_num_threads(threads); });
}

DataParallel::~DataParallel() = default;

void DataParallel::refresh_replicas() {
  for (const auto& replica : replicas_) {
    detail::copy_values(*module_, *replica);
    for (auto& p : replica->parameters()) p.mutable_grad() = torch::Tensor();
    replica->train(module_->is_training());
  }
}

std::vector<torch::Tensor> DataParallel::summed_gradients() const {
  torch::NoGradGuard no_grad;
  std::vector<torch::OrderedDict<std::string, torch::Tensor>> replica_params;
  for (const auto& replica : replicas_) replica_params.push_back(replica->named_parameters());
  std::vector<torch::Tensor> sums;
  for (const auto& item : module_->named_parameters()) {
    torch::Tensor sum;
    const torch::Device home = item.value().device();
    for (const auto& params : replica_params) {  // replica order, on the module's device
      const torch::Tensor& g = params[item.key()].grad();
      if (!g.defined()) continue;
      sum = sum.defined() ? sum.add_(g.to(home)) : g.to(home, /*non_blocking=*/false, /*copy=*/true);
    }
    sums.push_back(sum.defined() ? sum : torch::zeros_like(item.value()));
  }
  return sums;
}

void DataParallel::take_results(const std::vector<torch::Tensor>& gradients) {
  torch::NoGradGuard no_grad;
  std::size_t i = 0;
  for (auto& p : module_->parameters()) {
    torch::Tensor& grad = p.mutable_grad();
    grad = grad.defined() ? grad.add_(gradients[i]) : gradients[i].clone();
    ++i;
  }
  const auto buffers = replicas_.front()->named_buffers();
  for (auto& item : module_->named_buffers()) item.value().copy_(buffers[item.key()]);
}

double DataParallel::step(const torch::Tensor& input, const torch::Tensor& target, const ReplicaLoss& loss) {
  return step(input, target, loss, Part{});
}

double DataParallel::step(const torch::Tensor& input, const torch::Tensor& target, const ReplicaLoss& loss,
                          const Part& part) {
  constexpr const char* op = "DataParallel::step";
  SYNCBN_CHECK(input.defined() && input.dim() >= 1, op, ": the input is ",
               input.defined() ? "a scalar" : "undefined", ", expected a batch (dimension 0: the rows)");
  const std::int64_t n = input.size(0);
  const std::int64_t batch_rows = part.batch_rows > 0 ? part.batch_rows : n;
  SYNCBN_CHECK(batch_rows >= 1, op, ": a batch of 0 rows, expected at least 1");
  SYNCBN_CHECK(n <= batch_rows, op, ": ", n, " rows of a batch of ", batch_rows, ", expected at most ", batch_rows);
  SYNCBN_CHECK(!target.defined() || (target.dim() >= 1 && target.size(0) == n), op, ": the target has ",
               target.dim() >= 1 ? target.size(0) : 0, " rows, expected ", n, " as the input");
  SYNCBN_CHECK(static_cast<bool>(loss), op, ": no loss function, expected one");
  refresh_replicas();

  const auto k = static_cast<std::int64_t>(replicas_.size());
  std::vector<std::int64_t> begin(static_cast<std::size_t>(k) + 1, 0);
  for (std::int64_t r = 0; r < k; ++r)
    begin[static_cast<std::size_t>(r) + 1] = begin[static_cast<std::size_t>(r)] + n / k + (r < n % k ? 1 : 0);

  const at::ThreadLocalState state;
  std::vector<double> losses(static_cast<std::size_t>(k), 0.0);
  std::atomic<int> first_failure{-1};
  const std::function<void(int)> run = [&](int r) {
    const auto i = static_cast<std::size_t>(r);
    at::ThreadLocalStateGuard guard(state);
    const torch::Device device = devices_[i];
    c10::OptionalDeviceGuard on_device;
    if (device.is_cuda()) on_device.reset_device(device);
    const std::int64_t rows = begin[i + 1] - begin[i];
    const torch::Tensor x = input.narrow(0, begin[i], rows).to(device);
    const torch::Tensor t = target.defined() ? target.narrow(0, begin[i], rows).to(device) : target;
    const torch::Tensor l = loss(*replicas_[i], x, t);
    SYNCBN_CHECK(l.defined() && l.numel() == 1, op, ": replica ", r, "'s loss has ", l.defined() ? l.numel() : 0,
                 " elements, expected a scalar");
    // The shard's share of the batch's mean loss (an empty shard still
    // runs its backward: its batch norms take part in the exchange).
    const double share = static_cast<double>(rows) / static_cast<double>(batch_rows);
    (l * share).backward();
    if (rows > 0) losses[i] = l.item<double>() * share;
  };
  const std::function<void(int, const std::exception_ptr&)> release = [&](int r, const std::exception_ptr& error) {
    int none = -1;
    if (first_failure.compare_exchange_strong(none, r))
      for (const auto& rv : rendezvous_) rv->abort_for(r, message_of(error));
  };
  const std::vector<std::exception_ptr> errors = pool_->run(run, release);

  if (const int failed = first_failure.load(); failed >= 0) {
    for (const auto& rv : rendezvous_) rv->reset();
    SYNCBN_THROW(Error, op, ": replica ", failed, " failed, expected every replica's step to succeed: ",
                 message_of(errors[static_cast<std::size_t>(failed)]));
  }
  if (steps_ == 0) check_layers_ran(*replicas_.front(), op);
  std::vector<torch::Tensor> gradients = summed_gradients();
  if (part.reduce) part.reduce(gradients);
  ++steps_;
  take_results(gradients);
  double total = 0.0;
  for (const double l : losses) total += l;
  return total;
}

}  // namespace syncbn::libtorch
