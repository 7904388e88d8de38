// DistributedDataParallel for torch::nn models: rank 0's state to every
// rank, then per step the global row count, this rank's DataParallel step
// weighted by it, and the gradients summed across the ranks in rank order
// (ProcessGroup::all_reduce_sum, float64, bit-identical on every rank).

#include "syncbn/libtorch/distributed_data_parallel.hpp"

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "syncbn/error.hpp"
#include "syncbn/libtorch/sync_batch_norm.hpp"

namespace syncbn::libtorch {
namespace {

constexpr const char* kOp = "DistributedDataParallel";

// The module's parameters and buffers, in a fixed order.
std::vector<torch::Tensor> state_of(torch::nn::Module& module) {
  std::vector<torch::Tensor> out;
  for (auto& p : module.parameters()) out.push_back(p);
  for (auto& b : module.buffers()) out.push_back(b);
  return out;
}

// Checks the layers' group and brings rank 0's state to every rank.
std::shared_ptr<torch::nn::Module> prepared(std::shared_ptr<torch::nn::Module> module,
                                            const std::shared_ptr<comm::ProcessGroup>& group,
                                            const DistributedDataParallel::Options& options) {
  SYNCBN_CHECK(module != nullptr, kOp, ": the module is null, expected a module");
  SYNCBN_CHECK(group != nullptr, kOp, ": the process group is null, expected a group");
  SYNCBN_CHECK(options.bucket_values > 0, kOp, ": bucket_values 0, expected > 0");
  SYNCBN_CHECK(options.timeout.count() >= 0, kOp, ": timeout ", options.timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
  for (const auto& item : module->named_modules("", /*include_self=*/true)) {
    const auto* s = dynamic_cast<const Synchronized*>(item.value().get());
    if (s == nullptr || s->sync_options().process_group == group) continue;
    SYNCBN_THROW(InvalidArgument, kOp, ": the synchronized batch norm '", item.key(), "' (", s->label(), ") ",
                 s->sync_options().process_group ? "synchronizes over another process group" : "has no process group",
                 ", expected this DistributedDataParallel's group (convert_sync_batchnorm(module, {.process_group = "
                 "group}))");
  }
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> state = state_of(*module);
  std::size_t bytes = 0;
  for (const auto& t : state) bytes += t.nbytes();
  std::vector<std::byte> packed(bytes);
  std::size_t at = 0;
  for (const auto& t : state) {  // host copies: MPI moves host memory
    const torch::Tensor c = t.to(torch::kCPU).contiguous();
    std::memcpy(packed.data() + at, c.data_ptr(), c.nbytes());
    at += c.nbytes();
  }
  group->broadcast(packed, 0, std::string(kOp) + ": rank 0's parameters and buffers", options.timeout);
  at = 0;
  for (auto& t : state) {
    torch::Tensor c = torch::empty(t.sizes(), t.options().device(torch::kCPU));
    std::memcpy(c.data_ptr(), packed.data() + at, c.nbytes());
    t.copy_(c);
    at += c.nbytes();
  }
  return module;
}

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<torch::nn::Module> module,
                                                 std::shared_ptr<comm::ProcessGroup> group, Options options)
    : group_(group),
      options_(options),
      runner_(prepared(std::move(module), group, options),
              DataParallel::Options{.replicas = options.replicas, .intra_op_threads = options.intra_op_threads,
                                    .make_replica = options.make_replica, .devices = options.devices}) {}

void DistributedDataParallel::reduce_gradients(std::vector<torch::Tensor>& gradients) const {
  if (gradients.empty()) return;
  // One float64 vector of every gradient, summed in place in buckets of
  // bucket_values, rank order: every rank gets the same bits.
  std::vector<torch::Tensor> pieces;
  for (const auto& g : gradients) pieces.push_back(g.to(torch::kCPU, torch::kDouble).reshape(-1));
  torch::Tensor flat = torch::cat(pieces);
  double* values = flat.data_ptr<double>();
  const auto n = static_cast<std::size_t>(flat.numel());
  for (std::size_t first = 0, bucket = 0; first < n; first += options_.bucket_values, ++bucket) {
    const std::span<double> part(values + first, std::min(options_.bucket_values, n - first));
    group_->all_reduce_sum(part, part, std::string(kOp) + "::step: gradients, bucket " + std::to_string(bucket),
                           options_.timeout);
  }
  std::int64_t at = 0;
  for (auto& g : gradients) {
    g = flat.narrow(0, at, g.numel()).view(g.sizes()).to(g.device(), g.scalar_type());
    at += g.numel();
  }
}

double DistributedDataParallel::step(const torch::Tensor& input, const torch::Tensor& target,
                                     const ReplicaLoss& loss) {
  constexpr const char* op = "DistributedDataParallel::step";
  SYNCBN_CHECK(input.defined() && input.dim() >= 1, op, ": the input is ",
               input.defined() ? "a scalar" : "undefined", ", expected this rank's rows (dimension 0)");
  double rows = static_cast<double>(input.size(0));
  group_->all_reduce_sum({&rows, 1}, {&rows, 1}, std::string(op) + ": rows", options_.timeout);
  const auto batch_rows = static_cast<std::int64_t>(rows);
  SYNCBN_CHECK(batch_rows >= 1, op, ": a global batch of 0 rows, expected at least 1");
  DataParallel::Part part;
  part.batch_rows = batch_rows;
  part.reduce = [this](std::vector<torch::Tensor>& gradients) { reduce_gradients(gradients); };
  double mean = runner_.step(input, target, loss, part);
  group_->all_reduce_sum({&mean, 1}, {&mean, 1}, std::string(op) + ": loss", options_.timeout);
  return mean;
}

}  // namespace syncbn::libtorch
