// DistributedDataParallel: DataParallel within a process, a process group
// across processes (Note [Distributed gradients]).

#include "syncbn/distributed/distributed_data_parallel.hpp"

#include <cstring>
#include <string>

#include "syncbn/core/ops.hpp"
#include "syncbn/error.hpp"

namespace syncbn::distributed {
namespace {

// Note [Distributed gradients]
// One device on the concatenated batch minimizes L = (1/B) sum_i l_i; a
// process computes L_p = (1/b) sum over its b samples, so dL/dy_i =
// (b / B) dL_p/dy_i for its samples. Backward therefore scales the incoming
// gradient by b / B before the local DataParallel backward: every gradient
// sum that a SyncBatchNorm exchanges across processes is then one of L,
// whatever the processes' batch sizes (PyTorch's DDP averages over the
// processes instead, which is the same only for equal b). The parameter
// gradients of this step are then summed over the processes in rank order
// (bit-identical on every rank). A step's contribution is taken alone (the
// gradients are set aside, zeroed, and added back after the sum), so that
// gradients accumulated over earlier steps are not summed again.

std::shared_ptr<nn::Module> checked_module(std::shared_ptr<nn::Module> module) {
  SYNCBN_CHECK(module != nullptr, "DistributedDataParallel: module is null, expected a module");
  return module;
}

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<nn::Module> module, std::vector<Device> devices,
                                                 std::shared_ptr<comm::ProcessGroup> group,
                                                 DistributedOptions options)
    : local_(checked_module(std::move(module)), std::move(devices), std::nullopt, options.local),
      group_(std::move(group)),
      options_(options) {
  SYNCBN_CHECK(group_ != nullptr, "DistributedDataParallel: process group is null, expected a group");
  broadcast_state(true, true, "DistributedDataParallel: rank 0's parameters and buffers");
}

void DistributedDataParallel::broadcast_state(bool parameters, bool buffers, const char* why) {
  std::vector<Tensor*> tensors;
  if (parameters)
    for (nn::Parameter* p : local_.module().parameters()) tensors.push_back(&p->value);
  if (buffers)
    for (auto& [name, buffer] : local_.module().named_buffers()) tensors.push_back(buffer);
  std::vector<std::byte> bytes;
  for (const Tensor* t : tensors) {
    const Tensor host = t->onto(Device());
    const auto* data = static_cast<const std::byte*>(host.raw_data());
    bytes.insert(bytes.end(), data, data + host.nbytes());
  }
  group_->broadcast(bytes, 0, why, options_.timeout);
  std::size_t offset = 0;
  for (Tensor* t : tensors) {
    Tensor host = Tensor::empty(t->shape(), t->dtype(), Device());
    std::memcpy(host.raw_data(), bytes.data() + offset, host.nbytes());
    offset += host.nbytes();
    t->copy_(host);
  }
}

Tensor DistributedDataParallel::forward(const Tensor& input) {
  SYNCBN_CHECK(input.defined() && input.rank() >= 1, "DistributedDataParallel::forward: input ",
               input.defined() ? std::to_string(input.rank()) + "-D" : std::string("undefined"),
               ", expected a tensor of rank >= 1");
  has_forward_ = false;
  if (!local_.module().is_training()) {
    // Eval is this process's own: no collective, so a process may evaluate
    // alone or on its share of the data; there is no backward to follow.
    return local_.forward(input);
  }
  if (options_.broadcast_buffers)
    broadcast_state(false, true, "DistributedDataParallel::forward: rank 0's buffers");
  const double mine = static_cast<double>(input.size(0));
  const double total =
      group_->all_reduce_sum(std::span(&mine, 1), "DistributedDataParallel::forward: batch sizes", options_.timeout)[0];
  Tensor output = local_.forward(input);
  local_batch_ = input.size(0);
  global_batch_ = static_cast<std::int64_t>(total);
  has_forward_ = true;
  return output;
}

Tensor DistributedDataParallel::backward(const Tensor& grad_output) {
  SYNCBN_CHECK(has_forward_, "DistributedDataParallel::backward: no forward to go back through, expected a "
                             "successful forward first");
  SYNCBN_CHECK(global_batch_ > 0, "DistributedDataParallel::backward: the global batch is empty, expected samples "
                                  "on at least one process");
  has_forward_ = false;
  // This step's gradients alone: the ones held so far are set aside.
  std::vector<Tensor> before;
  const auto params = local_.module().parameters();
  for (nn::Parameter* p : params) {
    before.push_back(p->grad.clone());
    p->grad.fill_(0.0);
  }
  const double scale = static_cast<double>(local_batch_) / static_cast<double>(global_batch_);
  Tensor grad_input;
  try {
    // An undefined grad_output goes to DataParallel as it is: it refuses it
    // and puts the step's forward back (Note [Step guarantees]).
    grad_input = local_.backward(grad_output.defined() ? core::scale(grad_output, scale) : grad_output);
    sum_gradients();
  } catch (...) {
    for (std::size_t i = 0; i < params.size(); ++i) params[i]->grad.copy_(before[i]);
    throw;
  }
  for (std::size_t i = 0; i < params.size(); ++i) core::add_(params[i]->grad, before[i]);
  return grad_input;
}

void DistributedDataParallel::sum_gradients() {
  const auto params = local_.module().parameters();
  std::vector<double> flat;
  for (const nn::Parameter* p : params) {
    const auto g = p->grad.to_vector<double>();
    flat.insert(flat.end(), g.begin(), g.end());
  }
  const std::vector<double> sums =
      group_->all_reduce_sum(flat, "DistributedDataParallel::backward: gradients", options_.timeout);
  std::size_t offset = 0;
  for (nn::Parameter* p : params) {
    const auto n = static_cast<std::size_t>(p->grad.numel());
    const std::vector<double> part(sums.begin() + static_cast<std::ptrdiff_t>(offset),
                                   sums.begin() + static_cast<std::ptrdiff_t>(offset + n));
    p->grad.copy_(Tensor::from_vector(part, p->grad.shape(), Device()).to(p->grad.dtype()));
    offset += n;
  }
}

}  // namespace syncbn::distributed
