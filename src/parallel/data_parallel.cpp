// DataParallel: persistent replicas and workers, scatter / parallel run /
// gather, gradient reduction, and failure handling.

#include "syncbn/parallel/data_parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <thread>

#include "replica_errors.hpp"
#include "replica_threads.hpp"
#include "syncbn/sync/sync_master.hpp"
#include "syncbn/sync/worker_pool.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/nn/replication_context.hpp"

namespace syncbn::parallel {

struct DataParallel::Workers {
  explicit Workers(const std::vector<Device>& devices)
      : pool(static_cast<int>(devices.size()), detail::replica_thread_setup(devices)) {}
  sync::WorkerPool pool;
};

namespace {

bool same_view(const Tensor& a, const Tensor& b) {
  return a.shares_storage_with(b) && a.storage_offset() == b.storage_offset();
}

void mix(std::size_t& h, std::size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); }

// Identifies the module tree and the storage of its tensors: replicas alias
// that storage, so a replaced tensor or a changed tree needs new replicas.
std::size_t fingerprint(nn::Module& module) {
  std::size_t h = 0;
  const std::hash<std::string> hs;
  for (auto& [name, m] : module.named_modules()) {
    mix(h, hs(name));
    mix(h, hs(m->describe()));
  }
  auto tensor_id = [&](const Tensor& t) {
    mix(h, hs(t.shape().str()));
    mix(h, static_cast<std::size_t>(t.dtype()));
    mix(h, std::hash<Device>()(t.device()));
    mix(h, reinterpret_cast<std::size_t>(t.raw_data()));
  };
  for (auto& [name, p] : module.named_parameters()) {
    mix(h, hs(name));
    tensor_id(p->value);
  }
  for (auto& [name, b] : module.named_buffers()) {
    mix(h, hs(name));
    tensor_id(*b);
  }
  return h;
}

// Runs task(i) on every replica's worker; on failure releases the other
// replicas, waits for all, resets the rendezvous and rethrows the root cause.
void run_tasks(sync::WorkerPool& pool, Replication& replicas, const std::string& who, const char* phase,
               const std::function<void(int)>& task, const std::function<void()>& cleanup) {
  const auto& devices = replicas.devices();
  // Each worker runs its replica as that copy (Note [Replica threads]).
  const std::function<void(int)> as_replica = [&task](int i) {
    nn::ReplicaThread scope(i);
    task(i);
  };
  // The order in which replicas failed: the first failure is the likely
  // cause of the others (they were released by its abort).
  std::atomic<int> failures{0};
  std::vector<int> order(devices.size(), 0);
  auto errors = pool.run(as_replica, [&](int i, const std::exception_ptr& error) {
    order[static_cast<std::size_t>(i)] = failures.fetch_add(1);
    replicas.abort(i, "replica " + std::to_string(i) + " on " + devices[static_cast<std::size_t>(i)].str() +
                          " failed: " + sync::describe_exception(error));
  });
  const int root = detail::root_failure(errors, order);
  if (root < 0) return;
  try {
    replicas.reset();  // every replica is idle now
    cleanup();
  } catch (...) {
    // The step failed already; report its cause, not the clean-up's.
  }
  detail::rethrow_with_context(errors[static_cast<std::size_t>(root)],
                               who + ": replica " + std::to_string(root) + " on " +
                                   devices[static_cast<std::size_t>(root)].str() + " failed in " + phase + ": ");
}

}  // namespace

namespace {

// Note [BLAS threads]
// The BLAS behind the CPU convolutions (OpenBLAS) runs each call on a pool of
// its own, by default one thread per core, and every replica thread calls
// it: K replicas then ask for K times the cores, and the calls queue on the
// pool. Measured on 2 cores (the ResNet demo, 4 CPU replicas): 277 samples/s
// with OpenBLAS's default, 610 with one BLAS thread per call; one device is
// no slower with the default. So a DataParallel over K CPU devices gives
// each call cores / (K x P) threads (at least 1), where P is the number of
// processes of the job that share this node as the launcher tells it
// (OpenMPI's OMPI_COMM_WORLD_LOCAL_SIZE, MPICH's MPI_LOCALNRANKS; 1
// otherwise), unless the user has chosen (OPENBLAS_NUM_THREADS or
// OMP_NUM_THREADS set); one device in one process keeps the default. The
// oneDNN convolutions follow the same rule, set per replica worker when it
// starts (their OpenMP threads are a per-thread setting:
// replica_threads.hpp), unless OMP_NUM_THREADS is set. In a build with
// oneDNN, Auto's engine search then leaves the BLAS one thread per call
// (Note [One pool of threads beside oneDNN] in src/core/cpu/conv_engines.cpp).
void share_cores_with_blas(const std::vector<Device>& devices) {
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("OMP_NUM_THREADS") != nullptr) return;
  if (const int threads = detail::cpu_threads_per_replica(devices); threads > 0) cpu::set_blas_threads(threads);
}

}  // namespace

DataParallel::DataParallel(std::shared_ptr<nn::Module> module, std::vector<Device> devices,
                           std::optional<Device> output_device, DataParallelOptions options)
    : module_(std::move(module)), devices_(std::move(devices)), options_(options) {
  SYNCBN_CHECK(module_ != nullptr, "DataParallel: module is null, expected a module");
  SYNCBN_CHECK(!devices_.empty() && devices_.size() <= static_cast<std::size_t>(core::kMaxReplicas),
               "DataParallel: ", devices_.size(), " devices, expected 1 to ", core::kMaxReplicas);
  for (Device d : devices_) d.check_available();
  if (!options.allow_shared_devices) {
    std::set<std::pair<int, int>> seen;
    for (Device d : devices_)
      SYNCBN_CHECK(seen.emplace(static_cast<int>(d.kind()), d.index()).second, "DataParallel: device ", d,
                   " is listed twice, expected distinct devices (set allow_shared_devices for logical replicas "
                   "sharing a GPU)");
  }
  output_device_ = output_device.value_or(devices_.front());
  output_device_.check_available();
  check_module_device();
  if (devices_.size() > 1) workers_ = std::make_unique<Workers>(devices_);
  share_cores_with_blas(devices_);
}

DataParallel::~DataParallel() = default;

void DataParallel::check_module_device() const {
  const Device home = devices_.front();
  for (auto& [name, p] : module_->named_parameters())
    SYNCBN_CHECK(p->value.device() == home, "DataParallel: parameter '", name, "' is on ", p->value.device(),
                 ", expected ", home, " (devices[0])");
  for (auto& [name, b] : module_->named_buffers())
    SYNCBN_CHECK(b->device() == home, "DataParallel: buffer '", name, "' is on ", b->device(), ", expected ", home,
                 " (devices[0])");
}

void DataParallel::train(bool on) { module_->train(on); }

void DataParallel::ensure_replicas() {
  const std::size_t fp = fingerprint(*module_);
  if (!replication_.empty() && fp == fingerprint_) return;
  try {
    replication_ = replicate(*module_, devices_);
  } catch (...) {
    // The user called forward: say so before replicate's own account.
    detail::rethrow_with_context(std::current_exception(), "DataParallel::forward: ");
  }
  fingerprint_ = fp;
  ++replications_;
}

Tensor DataParallel::gather_outputs(const std::vector<Tensor>& outputs) {
  std::vector<std::int64_t> rows;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& y = outputs[i];
    SYNCBN_CHECK(y.defined() && y.rank() >= 1, "DataParallel::forward: replica ", i, " on ", devices_[i], " returned ",
                 y.defined() ? "a scalar" : "an undefined tensor", ", expected a tensor of rank >= 1 (rows to gather)");
    rows.push_back(y.size(0));
  }
  Tensor out;
  try {
    out = comm::gather(outputs, output_device_);
  } catch (...) {
    detail::rethrow_with_context(std::current_exception(), "DataParallel::forward: the replicas' outputs: ");
  }
  output_rows_ = std::move(rows);
  return out;
}

void DataParallel::refresh_replicas() {
  auto params = module_->named_parameters();
  auto buffers = module_->named_buffers();
  for (std::size_t k = 0; k < replication_.size(); ++k) {
    nn::Module& replica = replication_[k];
    replica.train(module_->is_training());
    auto rp = replica.named_parameters();
    for (std::size_t j = 0; j < rp.size(); ++j)
      if (!same_view(rp[j].second->value, params[j].second->value)) rp[j].second->value.copy_(params[j].second->value);
    auto rb = replica.named_buffers();
    for (std::size_t j = 0; j < rb.size(); ++j)
      if (!same_view(*rb[j].second, *buffers[j].second)) rb[j].second->copy_(*buffers[j].second);
  }
}

void DataParallel::write_back_buffers() {
  auto buffers = module_->named_buffers();
  auto rb = replication_[0].named_buffers();
  for (std::size_t j = 0; j < rb.size(); ++j)
    if (!same_view(*rb[j].second, *buffers[j].second)) buffers[j].second->copy_(*rb[j].second);
}

void DataParallel::zero_replica_grads() {
  for (std::size_t k = 0; k < replication_.size(); ++k) replication_[k].zero_grad();
}

void DataParallel::run_on_replicas(const char* phase, const std::function<void(int)>& task) {
  run_tasks(workers_->pool, replication_, "DataParallel", phase, task, [this] {
    has_forward_ = false;
    zero_replica_grads();
  });
}

namespace {

// Copies of tensors, taken before a step changes them.
std::vector<Tensor> snapshot(const std::vector<std::pair<std::string, Tensor*>>& tensors) {
  std::vector<Tensor> out;
  out.reserve(tensors.size());
  for (const auto& [name, t] : tensors) out.push_back(t->clone());
  return out;
}

std::vector<Tensor> snapshot_grads(nn::Module& module) {
  std::vector<Tensor> out;
  for (auto& [name, p] : module.named_parameters()) out.push_back(p->grad.clone());
  return out;
}

// Writes a snapshot back into the same tensors (their storage, so that
// replicas aliasing them see it too). Never throws: a step that failed
// reports its own error.
void restore(const std::vector<Tensor*>& targets, const std::vector<Tensor>& saved) noexcept {
  if (targets.size() != saved.size()) return;  // the module's tree changed in between
  for (std::size_t j = 0; j < saved.size(); ++j) {
    try {
      targets[j]->copy_(saved[j]);
    } catch (...) {
    }
  }
}

std::vector<Tensor*> buffer_targets(nn::Module& module) {
  std::vector<Tensor*> out;
  for (auto& [name, b] : module.named_buffers()) out.push_back(b);
  return out;
}

std::vector<Tensor*> grad_targets(nn::Module& module) {
  std::vector<Tensor*> out;
  for (auto& [name, p] : module.named_parameters()) out.push_back(&p->grad);
  return out;
}

}  // namespace

Tensor DataParallel::forward(const Tensor& input) {
  SYNCBN_CHECK(input.defined(), "DataParallel::forward: input is undefined, expected a tensor");
  SYNCBN_CHECK(input.rank() >= 1, "DataParallel::forward: input is a scalar, expected a batch (rank >= 1)");
  SYNCBN_CHECK(input.device() == devices_.front() || input.device().is_cpu(), "DataParallel::forward: input is on ",
               input.device(), ", expected ", devices_.front(), " (devices[0]) or host memory");
  check_module_device();
  has_forward_ = false;
  buffers_before_step_.clear();
  step_undo_.clear();
  // Note [Step guarantees]: the buffers as they were before this step, put
  // back if its forward or its backward fails.
  std::vector<Tensor> before = snapshot(module_->named_buffers());
  Tensor out;
  try {
    if (devices_.size() == 1) {
      const nn::UndoRecords::Adopt adopt(step_undo_);
      out = module_->forward(input.onto(devices_.front())).onto(output_device_);
    } else {
      ensure_replicas();
      refresh_replicas();
      const auto chunks =
          comm::scatter(input, devices_, comm::even_chunk_sizes(input.size(0), static_cast<int>(devices_.size())));
      std::vector<Tensor> outputs(devices_.size());
      run_on_replicas("forward", [&](int i) {
        const nn::UndoRecords::Adopt adopt(step_undo_);
        outputs[static_cast<std::size_t>(i)] = replication_[static_cast<std::size_t>(i)].forward(chunks[static_cast<std::size_t>(i)]);
      });
      write_back_buffers();
      out = gather_outputs(outputs);
    }
  } catch (...) {
    // The replicas whose forward completed hand over their records; the
    // failed ones undid their own part already.
    step_undo_.undo();
    restore(buffer_targets(*module_), before);
    throw;
  }
  input_device_ = input.device();
  output_shape_ = out.shape();
  buffers_before_step_ = std::move(before);
  has_forward_ = true;
  return out;
}

Tensor DataParallel::backward(const Tensor& grad_output) {
  SYNCBN_CHECK(has_forward_, "DataParallel::backward: no forward to differentiate, expected a successful forward first");
  // Note [Step guarantees]: a failed backward, a refused grad_output
  // included, puts the gradients and the forward's buffers back: the step
  // leaves no trace. With replicas the module's gradients change only after
  // every replica has finished; one device accumulates into them as it goes,
  // so they are saved first.
  const std::vector<Tensor> grads_before = devices_.size() == 1 ? snapshot_grads(*module_) : std::vector<Tensor>{};
  try {
    SYNCBN_CHECK(grad_output.defined(), "DataParallel::backward: grad_output is undefined, expected a tensor");
    SYNCBN_CHECK(grad_output.shape() == output_shape_, "DataParallel::backward: grad_output has shape ",
                 grad_output.shape(), ", expected ", output_shape_, " (the output's)");
    Tensor dx = backward_step(grad_output);
    buffers_before_step_.clear();  // the step is complete
    step_undo_.clear();
    return dx;
  } catch (...) {
    has_forward_ = false;
    if (devices_.size() == 1) restore(grad_targets(*module_), grads_before);
    step_undo_.undo();  // what the buffers do not hold: kept and accumulated statistics
    restore(buffer_targets(*module_), buffers_before_step_);
    buffers_before_step_.clear();
    throw;
  }
}

Tensor DataParallel::backward_step(const Tensor& grad_output) {
  if (devices_.size() == 1) return module_->backward(grad_output.onto(devices_.front())).onto(input_device_);

  // Each replica gets the gradient of the rows it returned (as on one
  // device, a module's output need not have its input's rows).
  const auto chunks = comm::scatter(grad_output, devices_, output_rows_);
  std::vector<Tensor> grad_inputs(devices_.size());
  run_on_replicas("backward", [&](int i) {
    grad_inputs[static_cast<std::size_t>(i)] = replication_[static_cast<std::size_t>(i)].backward(chunks[static_cast<std::size_t>(i)]);
  });
  auto params = module_->named_parameters();
  if (!params.empty()) {
    std::vector<std::vector<Tensor>> groups(replication_.size());
    for (std::size_t k = 0; k < replication_.size(); ++k)
      for (auto& [name, p] : replication_[k].named_parameters()) groups[k].push_back(p->grad);
    // Every sum is computed before the first is added: the module's
    // gradients change all together or not at all.
    const auto reduced = comm::reduce_add_coalesced(groups, devices_.front());
    for (std::size_t j = 0; j < params.size(); ++j) add_(params[j].second->grad, reduced[j]);
  }
  zero_replica_grads();
  return comm::gather(grad_inputs, input_device_);
}

namespace {

void check_each(const Replication& replicas, const std::vector<Tensor>& inputs, const char* who) {
  SYNCBN_CHECK(!replicas.empty(), who, ": no replicas, expected the result of replicate()");
  SYNCBN_CHECK(inputs.size() == replicas.size(), who, ": ", inputs.size(), " inputs, expected ", replicas.size(),
               " (one per replica)");
}

std::vector<Tensor> run_each(sync::WorkerPool& pool, Replication& replicas, const std::vector<Tensor>& inputs,
                             const char* who, const char* phase, bool forward) {
  std::vector<Tensor> outputs(inputs.size());
  run_tasks(pool, replicas, who, phase, [&](int i) {
    const auto u = static_cast<std::size_t>(i);
    outputs[u] = forward ? replicas[u].forward(inputs[u]) : replicas[u].backward(inputs[u]);
  }, [] {});
  return outputs;
}

}  // namespace

std::vector<Tensor> parallel_apply(Replication& replicas, const std::vector<Tensor>& inputs) {
  check_each(replicas, inputs, "parallel_apply");
  replicas.has_forward_ = false;
  auto outputs = run_each(replicas.worker_pool(), replicas, inputs, "parallel_apply", "forward", true);
  replicas.has_forward_ = true;
  return outputs;
}

std::vector<Tensor> parallel_backward(Replication& replicas, const std::vector<Tensor>& grad_outputs) {
  // Replicas whose forward failed would meet the others in no rendezvous of
  // the backward, and the others would wait for them until the timeout.
  SYNCBN_CHECK(replicas.has_forward_, "parallel_backward: the replicas have no forward to differentiate (the latest "
               "parallel_apply failed, or none ran), expected a successful parallel_apply first");
  check_each(replicas, grad_outputs, "parallel_backward");
  try {
    return run_each(replicas.worker_pool(), replicas, grad_outputs, "parallel_backward", "backward", false);
  } catch (...) {
    replicas.has_forward_ = false;
    throw;
  }
}

}  // namespace syncbn::parallel
