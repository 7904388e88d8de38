// BatchNorm: the shared implementation of BatchNorm*d and SyncBatchNorm*d.
// Numerics: Note [Batch-norm numerics] in src/cpu/cpu_batchnorm.cpp.

#include "syncbn/nn/batchnorm.hpp"

#include <cstdio>

#include "backend/kernels.hpp"
#include "nn/layer_checks.hpp"

namespace syncbn::nn {
namespace {

Tensor channel_tensor(std::int64_t c, Device device) { return Tensor::empty(Shape{c}, DType::Float64, device); }

std::string format_double(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

}  // namespace

BatchNorm::BatchNorm(std::string kind, int spatial_dims, std::int64_t num_features, BatchNormOptions options)
    : kind_(std::move(kind)), dims_(spatial_dims), features_(num_features), options_(options) {
  SYNCBN_CHECK(num_features >= 1, kind_, ": num_features is ", num_features, ", expected >= 1");
  SYNCBN_CHECK(options.eps >= 0, kind_, ": eps is ", options.eps, ", expected >= 0");
  SYNCBN_CHECK(!options.momentum || (*options.momentum >= 0 && *options.momentum <= 1), kind_, ": momentum is ",
               options.momentum.value_or(0), ", expected a value in [0, 1] or none");
  SYNCBN_CHECK(options.dtype == DType::Float32 || options.dtype == DType::Float64, kind_, ": dtype ",
               dtype_name(options.dtype), ", expected float32 or float64 for parameters and running statistics");
  const Shape c{num_features};
  if (options.affine) {
    weight_ = register_parameter("weight", Tensor::ones(c, options.dtype, options.device));
    bias_ = register_parameter("bias", Tensor::zeros(c, options.dtype, options.device));
  }
  if (options.track_running_stats) {
    running_mean_ = register_buffer("running_mean", Tensor::zeros(c, options.dtype, options.device));
    running_var_ = register_buffer("running_var", Tensor::ones(c, options.dtype, options.device));
    batches_ = register_buffer("num_batches_tracked", Tensor::zeros(Shape{}, DType::Int64, options.device));
  }
}

std::string BatchNorm::describe() const {
  return kind_ + "(" + std::to_string(features_) + ", eps=" + format_double(options_.eps) +
         ", momentum=" + (options_.momentum ? format_double(*options_.momentum) : std::string("None")) +
         ", affine=" + (options_.affine ? "true" : "false") +
         ", track_running_stats=" + (options_.track_running_stats ? "true" : "false") +
         (options_.eps_mode == EpsMode::Clamp ? ", eps_mode=clamp" : "") + ")";
}

Parameter& BatchNorm::weight() {
  SYNCBN_CHECK(options_.affine, kind_, ": the layer is not affine, it has no weight");
  return parameter(weight_);
}

Parameter& BatchNorm::bias() {
  SYNCBN_CHECK(options_.affine, kind_, ": the layer is not affine, it has no bias");
  return parameter(bias_);
}

Tensor& BatchNorm::running_mean() {
  SYNCBN_CHECK(options_.track_running_stats, kind_, ": the layer does not track running statistics");
  return buffer(running_mean_);
}

Tensor& BatchNorm::running_var() {
  SYNCBN_CHECK(options_.track_running_stats, kind_, ": the layer does not track running statistics");
  return buffer(running_var_);
}

Tensor& BatchNorm::num_batches_tracked() {
  SYNCBN_CHECK(options_.track_running_stats, kind_, ": the layer does not track running statistics");
  return buffer(batches_);
}

std::optional<Device> BatchNorm::state_device() const {
  if (options_.affine) return parameter(weight_).value.device();
  if (options_.track_running_stats) return buffer(running_mean_).device();
  return std::nullopt;
}

void BatchNorm::clear_cache() {
  input_ = Tensor();
  coef_ = Tensor();
  invstd_ = Tensor();
}

void BatchNorm::check_input(const Tensor& input) const {
  SYNCBN_CHECK(input.defined(), kind_, ": input is undefined, expected a tensor");
  const int rank = input.rank();
  if (dims_ == 1) {
    SYNCBN_CHECK(rank == 2 || rank == 3, kind_, ": expected 2-D (N, C) or 3-D (N, C, L) input, got ", rank,
                 "-D input");
  } else {
    const int want = dims_ + 2;
    SYNCBN_CHECK(rank == want, kind_, ": expected ", want, "-D input ", (dims_ == 2 ? "(N, C, H, W)" : "(N, C, D, H, W)"),
                 ", got ", rank, "-D input");
  }
  SYNCBN_CHECK(input.size(1) == features_, kind_, ": input has ", input.size(1), " channels, expected ", features_);
  const bool wide = options_.dtype == DType::Float64;
  const bool ok = wide ? input.dtype() == DType::Float64
                       : (input.dtype() == DType::Float32 || is_reduced_precision(input.dtype()));
  SYNCBN_CHECK(ok, kind_, ": input has dtype ", dtype_name(input.dtype()), ", expected ",
               wide ? "float64" : "float32, float16 or bfloat16", " (parameters are ", dtype_name(options_.dtype), ")");
  if (auto device = state_device()) {
    SYNCBN_CHECK(input.device() == *device, kind_, ": input is on ", input.device(), ", expected ", *device,
                 " (the device of its parameters)");
  }
}

BatchNorm::Finalized BatchNorm::finalize_statistics(const ShardStats& merged) const {
  SYNCBN_CHECK(!(is_training() && merged.count == 1), kind_,
               ": expected more than 1 value per channel when training, got 1 (input of ", features_,
               " channels with one value each over the whole batch)");
  const Device device = merged.mean.device();
  Finalized out{NormStats{merged.count, merged.mean, channel_tensor(features_, device)}, channel_tensor(features_, device)};
  syncbn::detail::batchnorm_kernels(device.kind())
      .finalize(device, features_, merged.count, merged.m2.data<double>(), options_.eps,
                options_.eps_mode == EpsMode::Clamp, out.norm.invstd.data<double>(), out.unbiased_var.data<double>());
  return out;
}

void BatchNorm::track_running(const Finalized& finalized) {
  if (!is_training() || !options_.track_running_stats || finalized.norm.count == 0) return;
  const Device device = finalized.norm.mean.device();
  syncbn::detail::batchnorm_kernels(device.kind())
      .update_running(device, options_.dtype, features_, options_.momentum.value_or(-1.0),
                      finalized.norm.mean.data<double>(), finalized.unbiased_var.data<double>(),
                      buffer(running_mean_).raw_data(), buffer(running_var_).raw_data(),
                      buffer(batches_).data<std::int64_t>());
}

BatchNorm::NormStats BatchNorm::finalize_and_track(const ShardStats& merged) {
  const Finalized finalized = finalize_statistics(merged);
  track_running(finalized);
  return finalized.norm;
}

BatchNorm::NormStats BatchNorm::batch_statistics(const ShardStats& shard) { return finalize_and_track(shard); }

BatchNorm::GradSums BatchNorm::gradient_sums(const GradSums& local) { return local; }

BatchNorm::ShardStats BatchNorm::merge_statistics(const std::vector<ShardStats>& parts, Device device) {
  SYNCBN_CHECK(!parts.empty(), "BatchNorm: no partial statistics to merge");
  const std::int64_t c = parts.front().mean.numel();
  std::vector<std::int64_t> counts;
  std::vector<Tensor> copies;  // partials that had to be brought to `device`
  std::vector<const double*> mean_ptrs, m2_ptrs;
  std::int64_t total = 0;
  for (const auto& p : parts) {
    counts.push_back(p.count);
    total += p.count;
    // Partials in the same memory (any CPU device, the same GPU) are read in
    // place, without taking a reference (the tensors' reference counts live
    // in the other replicas' caches); others are copied to `device`.
    if (p.mean.device().shares_memory_with(device)) {
      mean_ptrs.push_back(p.mean.data<double>());
      m2_ptrs.push_back(p.m2.data<double>());
    } else {
      copies.push_back(p.mean.to(device));
      mean_ptrs.push_back(copies.back().data<double>());
      copies.push_back(p.m2.to(device));
      m2_ptrs.push_back(copies.back().data<double>());
    }
  }
  ShardStats out{total, channel_tensor(c, device), channel_tensor(c, device)};
  syncbn::detail::batchnorm_kernels(device.kind())
      .merge_stats(device, c, static_cast<int>(parts.size()), counts.data(), mean_ptrs.data(), m2_ptrs.data(),
                   out.mean.data<double>(), out.m2.data<double>());
  return out;
}

Tensor BatchNorm::forward(const Tensor& input) {
  check_input(input);
  const Device device = input.device();
  const std::int64_t n = input.size(0);
  const std::int64_t c = features_;
  std::int64_t l = 1;
  for (int i = 2; i < input.rank(); ++i) l *= input.size(i);
  const auto& bn = syncbn::detail::batchnorm_kernels(device.kind());
  const bool batch_stats = is_training() || !options_.track_running_stats;

  NormStats norm;
  if (batch_stats) {
    ShardStats shard{n * l, channel_tensor(c, device), channel_tensor(c, device)};
    bn.stats(device, input.dtype(), n, c, l, input.raw_data(), shard.mean.data<double>(), shard.m2.data<double>());
    norm = batch_statistics(shard);
  } else {
    // Eval with running statistics: var = running_var (count 1 makes finalize's var = m2).
    norm.count = 0;
    norm.mean = buffer(running_mean_).to(DType::Float64);
    norm.invstd = channel_tensor(c, device);
    Tensor unused = channel_tensor(c, device);
    const Tensor var = buffer(running_var_).to(DType::Float64);
    bn.finalize(device, c, 1, var.data<double>(), options_.eps, options_.eps_mode == EpsMode::Clamp,
                norm.invstd.data<double>(), unused.data<double>());
  }

  Tensor coef = Tensor::empty(Shape{4 * c}, DType::Float64, device);
  bn.forward_coefficients(device, options_.dtype, c, norm.mean.data<double>(), norm.invstd.data<double>(),
                          options_.affine ? parameter(weight_).value.raw_data() : nullptr,
                          options_.affine ? parameter(bias_).value.raw_data() : nullptr, coef.data<double>());
  Tensor out = Tensor::empty(input.shape(), input.dtype(), device);
  bn.apply(device, input.dtype(), n, c, l, input.raw_data(), coef.data<double>(), out.raw_data());

  input_ = input;
  coef_ = coef;
  invstd_ = norm.invstd;
  count_ = norm.count;
  used_batch_stats_ = batch_stats;
  return out;
}

Tensor BatchNorm::backward(const Tensor& grad_output) {
  detail::check_backward(input_.defined(), grad_output, input_.shape(), kind_);
  detail::check_tensor(grad_output, kind_, "grad_output", input_.device(), input_.dtype());
  const Device device = input_.device();
  const std::int64_t n = input_.size(0);
  const std::int64_t c = features_;
  const std::int64_t l = n == 0 ? 1 : input_.numel() / (n * c);
  const auto& bn = syncbn::detail::batchnorm_kernels(device.kind());

  GradSums local{channel_tensor(c, device), channel_tensor(c, device)};
  bn.backward_reduce(device, input_.dtype(), n, c, l, grad_output.raw_data(), input_.raw_data(), coef_.data<double>(),
                     local.sum_dy.data<double>(), local.sum_dy_xmu.data<double>());
  // With batch statistics the mean and variance depend on every input, so
  // the sums over the whole batch enter dx; with running statistics they do not.
  const GradSums total = used_batch_stats_ ? gradient_sums(local) : local;
  Tensor coef_b = Tensor::empty(Shape{3 * c}, DType::Float64, device);
  bn.backward_coefficients(device, options_.dtype, c, used_batch_stats_ ? count_ : 0, invstd_.data<double>(),
                           options_.affine ? parameter(weight_).value.raw_data() : nullptr,
                           total.sum_dy.data<double>(), total.sum_dy_xmu.data<double>(), local.sum_dy.data<double>(),
                           local.sum_dy_xmu.data<double>(),
                           options_.affine ? parameter(weight_).grad.raw_data() : nullptr,
                           options_.affine ? parameter(bias_).grad.raw_data() : nullptr, coef_b.data<double>());
  Tensor dx = Tensor::empty(input_.shape(), input_.dtype(), device);
  bn.backward_apply(device, input_.dtype(), n, c, l, grad_output.raw_data(), input_.raw_data(), coef_.data<double>(),
                    coef_b.data<double>(), dx.raw_data());
  return dx;
}

}  // namespace syncbn::nn
