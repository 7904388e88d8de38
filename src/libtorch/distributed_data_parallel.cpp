// DistributedDataParallel for torch::nn models: rank 0's state to every
// rank, then per step the global row count, this rank's DataParallel step
// weighted by it, and the gradients summed across the ranks in rank order
// (ProcessGroup::all_reduce_sum, float64, bit-identical on every rank).

#include "syncbn/libtorch/distributed_data_parallel.hpp"

#include <algorithm>
#include <cstring>
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
  for (const auto& t : state) {
    const torch::Tensor c = t.contiguous();
    std::memcpy(packed.data() + at, c.data_ptr(), c.nbytes());
    at += c.nbytes();
  }
  group->broadcast(packed, 0, std::string(kOp) + ": rank 0's parameters and buffers", options.timeout);
  at = 0;
  for (auto& t : state) {
    torch::Tensor c = torch::empty_like(t, torch::MemoryFormat::Contiguous);
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
                                    .make_replica = options.make_replica}) {}

void DistributedDataParallel::reduce_gradients(std::vector<torch::Tensor>& gradients) const {
  // In buckets of float64 values, rank order: every rank gets the same bits.
  std::vector<double> bucket;
  bucket.reserve(options_.bucket_values);
  std::size_t bucket_index = 0;
  std::vector<std::pair<std::size_t, std::int64_t>> spans;  // (gradient, first element) of each piece
  std::vector<torch::Tensor> flat;
  for (auto& g : gradients) flat.push_back(g.to(torch::kDouble).contiguous().view(-1));
  auto flush = [&] {
    if (bucket.empty()) return;
    group_->all_reduce_sum(bucket, bucket, std::string(kOp) + "::step: gradients, bucket " + std::to_string(bucket_index++),
                           options_.timeout);
    std::size_t from = 0;
    for (const auto& [which, first] : spans) {
      torch::Tensor& f = flat[which];
      const std::int64_t count =
          std::min<std::int64_t>(f.numel() - first, static_cast<std::int64_t>(bucket.size() - from));
      std::memcpy(f.data_ptr<double>() + first, bucket.data() + from, static_cast<std::size_t>(count) * sizeof(double));
      from += static_cast<std::size_t>(count);
    }
    bucket.clear();
    spans.clear();
  };
  for (std::size_t i = 0; i < flat.size(); ++i) {
    const double* values = flat[i].data_ptr<double>();
    for (std::int64_t first = 0; first < flat[i].numel();) {
      const auto room = static_cast<std::int64_t>(options_.bucket_values - bucket.size());
      const std::int64_t take = std::min(room, flat[i].numel() - first);
      spans.emplace_back(i, first);
      bucket.insert(bucket.end(), values + first, values + first + take);
      first += take;
      if (bucket.size() == options_.bucket_values) flush();
    }
  }
  flush();
  for (std::size_t i = 0; i < gradients.size(); ++i)
    gradients[i] = flat[i].view(gradients[i].sizes()).to(gradients[i].scalar_type());
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
