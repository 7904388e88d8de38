// Batch-norm stages: one validation gate per stage, then the batch-norm
// table of the device kind (Note [Backend tables] in backend/kernels.hpp).
// Numerics: docs/numerics.md.

#include "syncbn/core/batch_norm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "backend/kernels.hpp"
#include "operand_checks.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core {
namespace {

Tensor channel_tensor(std::int64_t c, Device device) { return Tensor::empty(Shape{c}, DType::Float64, device); }

// Note [Channel layouts]
// The kernels see x as (n, c, l): n blocks of c channels of l contiguous
// values. Channels-first (N, C, *) is (N, C, L) with L the spatial size;
// channels-last (N, *, C) is (N * L, C, 1): rows of C channels, which the
// backends read with their (N, C) kernels, written for that layout (CPU:
// row sweeps and column blocks of channel vectors; CUDA: warps across
// channels), not by permuting around the channels-first ones. A grad_output
// in the other layout than x (a mixed pair, where other libraries have had
// wrong gradients) is permuted to x's layout once, then read as x is.

// x viewed as (n, c, l), with its channels' dimension.
struct Extents {
  std::int64_t n, c, l;
};

Extents check_input(const Tensor& x, const char* op, ChannelLayout layout = ChannelLayout::First,
                    const char* name = "x") {
  SYNCBN_CHECK(x.defined(), op, ": ", name, " is undefined, expected a tensor");
  SYNCBN_CHECK(x.rank() >= 2, op, ": ", name, " has rank ", x.rank(), ", expected rank >= 2 ",
               layout == ChannelLayout::First ? "(N, C, ...)" : "(N, ..., C)");
  SYNCBN_CHECK(x.dtype() == DType::Float32 || x.dtype() == DType::Float64 || is_reduced_precision(x.dtype()), op,
               ": ", name, " has dtype ", dtype_name(x.dtype()), ", expected float32, float64, float16 or bfloat16");
  detail::check_layout(layout, op);
  if (layout == ChannelLayout::Last) {
    std::int64_t rows = 1;
    for (int i = 0; i + 1 < x.rank(); ++i) rows *= x.size(i);
    return {rows, x.size(x.rank() - 1), 1};
  }
  std::int64_t l = 1;
  for (int i = 2; i < x.rank(); ++i) l *= x.size(i);
  return {x.size(0), x.size(1), l};
}

// The shape of x (rank >= 2) in the other layout.
Shape permuted_shape(const Shape& shape, ChannelLayout from) {
  std::vector<std::int64_t> dims = shape.dims();
  if (from == ChannelLayout::First)
    std::rotate(dims.begin() + 1, dims.begin() + 2, dims.end());
  else
    std::rotate(dims.begin() + 1, dims.end() - 1, dims.end());
  return Shape(dims);
}

// Note [Fused activation]
// batch_norm_apply computes y = act(z), z = (x - mean) * scale + shift, in
// the same pass. Backward needs dz = dy * act'(z) in place of dy: the
// kernels recompute z from x and the forward coefficients while they read
// them (or, for relu on the CPU, read the forward's z > 0 as bits: Note
// [The relu mask]), so the fused layer keeps x only, as batch norm alone,
// and no separate activation output exists. In the in-place mode (from_output) x is
// not kept at all: y overwrote it, and the kernels recover z = act^-1(y),
// act'(z) from y (y > 0 exactly where z > 0; elu's alpha * exp(z) is
// y + alpha) and x - mean = (z - shift) / scale, inplace_abn's inversion.
// That needs an invertible activation (relu loses z < 0) and scale != 0
// (the layer checks its weight); the recovered x - mean carries the
// rounding of y (docs/numerics.md).
void check_form(const BatchNormForm& form, const char* op) {
  const Activation& act = form.activation;
  act.check(op);
  SYNCBN_CHECK(!form.from_output || act.invertible(), op, ": from_output recovers x from y = ", act.name(),
               "(z), expected an invertible activation (identity, leaky_relu with a slope > 0, elu)");
}

detail::BatchNormFusion fusion_of(const BatchNormForm& form, std::uint8_t* relu_mask = nullptr) {
  return {form.activation.kind, form.activation.alpha, form.from_output, relu_mask};
}

// Note [The relu mask]
// A fused relu's backward needs z > 0 for every element. Recomputed from x
// and the forward's coefficients (two multiply-adds, a compare and a
// select per vector, in both backward passes), it made forward+backward of
// (256, 1024), which stays in cache and is bound by instructions, not
// memory, 1.19-1.27x plain batch norm's time, its two backward passes
// 1.37x and 1.40x theirs. So the CPU forward also writes z > 0 as bits, a
// thirty-second of a float32 tensor, and the backward reads dz = dy where
// the bit is set and is then plain batch norm's kernel
// (docs/performance.md, "The relu mask"). One bit per element, eight to a
// byte; each run of the kernels (a row of channels for l == 1, a channel's
// values of one sample otherwise) starts on a byte of its own, so that
// every vector of eight starts on one. The CPU keeps it for float32 and
// the 16-bit types (float64 vectors hold four lanes, and nothing there is
// bound by these instructions); CUDA recomputes z, as the CPU does without
// a mask. The mask is the forward's z > 0 exactly (relu(NaN) = 0, and its
// gradient 0, as before): gradients with and without it are equal bit for
// bit.

// Whether the stages of `form` on x keep a relu mask (batch_norm_relu_mask).
bool keeps_relu_mask(const Tensor& x, const BatchNormForm& form) {
  return form.activation.kind == ActivationKind::Relu && !form.from_output && x.device().is_cpu() &&
         x.dtype() != DType::Float64;
}

// The relu mask's bytes of x viewed as (n, c, l), as an int64 tensor holds them.
Shape relu_mask_shape(std::int64_t n, std::int64_t c, std::int64_t l) {
  return Shape{(detail::relu_mask_bytes(n, c, l) + 7) / 8};
}

// The mask's bytes for the kernels: null for an undefined mask, else
// checked against what batch_norm_relu_mask makes for x.
std::uint8_t* relu_mask_of(const Tensor& mask, const Tensor& x, const BatchNormForm& form, std::int64_t n,
                           std::int64_t c, std::int64_t l, const char* op) {
  if (!mask.defined()) return nullptr;
  SYNCBN_CHECK(keeps_relu_mask(x, form), op, ": relu_mask given for ", form.activation.name(),
               form.from_output ? " from the output" : "", " on ", dtype_name(x.dtype()), " data on ", x.device(),
               ", expected an undefined tensor (a mask is kept for relu from x on the CPU, float32 or 16-bit data)");
  const Shape expected = relu_mask_shape(n, c, l);
  SYNCBN_CHECK(mask.dtype() == DType::Int64 && mask.shape() == expected && mask.device() == x.device(), op,
               ": relu_mask is ", dtype_name(mask.dtype()), " ", mask.shape(), " on ", mask.device(), ", expected int64 ",
               expected, " on ", x.device(), " (batch_norm_relu_mask of x)");
  return static_cast<std::uint8_t*>(mask.raw_data());
}

// grad_output as the kernels read it: checked against `saved` (its shape in
// the grad's layout) and permuted to saved's layout when the two differ.
Tensor grad_in_layout(const Tensor& grad_output, const Tensor& saved, const BatchNormForm& form, const char* op) {
  const ChannelLayout grad_layout = form.grad_layout.value_or(form.layout);
  SYNCBN_CHECK(grad_layout == ChannelLayout::First || grad_layout == ChannelLayout::Last, op, ": grad_layout ",
               static_cast<int>(grad_layout), ", expected ChannelLayout::First or Last");
  SYNCBN_CHECK(grad_output.defined(), op, ": grad_output is undefined, expected a tensor like x");
  const Shape expected = grad_layout == form.layout ? saved.shape() : permuted_shape(saved.shape(), form.layout);
  SYNCBN_CHECK(grad_output.shape() == expected, op, ": grad_output has shape ", grad_output.shape(), ", expected ",
               expected, " (x's, ", channel_layout_name(grad_layout), ")");
  SYNCBN_CHECK(grad_output.dtype() == saved.dtype(), op, ": grad_output has dtype ", dtype_name(grad_output.dtype()),
               ", expected ", dtype_name(saved.dtype()), " (x's)");
  SYNCBN_CHECK(grad_output.device() == saved.device(), op, ": grad_output is on ", grad_output.device(), ", expected ",
               saved.device(), " (x's)");
  if (grad_layout == form.layout) return grad_output;
  return form.layout == ChannelLayout::Last ? to_channels_last(grad_output) : to_channels_first(grad_output);
}

// Permutes (N, A, B) to (N, B, A) for the layout changes.
Tensor swap_last_two(const Tensor& x, std::int64_t a, std::int64_t b, Shape out_shape) {
  Tensor out = Tensor::empty(std::move(out_shape), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  detail::memory_kernels(x.device().kind())
      .transpose(x.device(), dtype_size(x.dtype()), x.size(0), a, b, x.raw_data(), out.raw_data());
  return out;
}

// A float64 (C) tensor on `device`.
void check_channels(const Tensor& t, std::int64_t c, Device device, const char* op, const char* name) {
  SYNCBN_CHECK(t.defined(), op, ": ", name, " is undefined, expected a float64 tensor of shape (", c, ")");
  SYNCBN_CHECK(t.dtype() == DType::Float64, op, ": ", name, " has dtype ", dtype_name(t.dtype()),
               ", expected float64");
  SYNCBN_CHECK(t.shape() == Shape{c}, op, ": ", name, " has shape ", t.shape(), ", expected ", Shape{c});
  SYNCBN_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), ", expected ", device);
}

// An optional parameter-like tensor (weight, bias, their gradients): undefined, or (C) of param_dtype on device.
void check_optional_param(const Tensor& t, std::int64_t c, DType param_dtype, Device device, const char* op,
                          const char* name) {
  if (!t.defined()) return;
  SYNCBN_CHECK(t.dtype() == param_dtype, op, ": ", name, " has dtype ", dtype_name(t.dtype()), ", expected ",
               dtype_name(param_dtype));
  SYNCBN_CHECK(t.shape() == Shape{c}, op, ": ", name, " has shape ", t.shape(), ", expected ", Shape{c});
  SYNCBN_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), ", expected ", device);
}

void check_param_dtype(DType param_dtype, const char* op) {
  SYNCBN_CHECK(param_dtype == DType::Float32 || param_dtype == DType::Float64, op, ": param_dtype is ",
               dtype_name(param_dtype), ", expected float32 or float64");
}

// Running statistics: a mean and a variance of one float dtype, shape (C)
// and device; what the stages that read or update them need of them.
struct RunningStats {
  Device device;
  std::int64_t channels;
  DType dtype;
};
RunningStats check_running(const Tensor& running_mean, const Tensor& running_var, const char* op) {
  SYNCBN_CHECK(running_mean.defined() && running_var.defined(), op,
               ": running_mean and running_var must be defined, expected tensors of shape (C)");
  const RunningStats running{running_mean.device(), running_mean.numel(), running_mean.dtype()};
  check_param_dtype(running.dtype, op);
  check_optional_param(running_mean, running.channels, running.dtype, running.device, op, "running_mean");
  check_optional_param(running_var, running.channels, running.dtype, running.device, op, "running_var");
  return running;
}

void check_eps(double eps, const char* op) { SYNCBN_CHECK(eps >= 0, op, ": eps is ", eps, ", expected >= 0"); }

// Coefficient tensors hold `per_channel` float64 values per channel.
void check_coefficients(const Tensor& coef, std::int64_t c, int per_channel, Device device, const char* op,
                        const char* name) {
  SYNCBN_CHECK(coef.defined(), op, ": ", name, " is undefined, expected the coefficients of ", c, " channels");
  SYNCBN_CHECK(coef.dtype() == DType::Float64 && coef.shape() == Shape{per_channel * c}, op, ": ", name,
               " has dtype ", dtype_name(coef.dtype()), " and shape ", coef.shape(), ", expected float64 ",
               Shape{per_channel * c}, " (the coefficients of ", c, " channels)");
  SYNCBN_CHECK(coef.device() == device, op, ": ", name, " is on ", coef.device(), ", expected ", device);
}

const detail::BatchNormKernels& kernels(Device device) { return detail::batchnorm_kernels(device.kind()); }

}  // namespace

const char* channel_layout_name(ChannelLayout layout) noexcept {
  return layout == ChannelLayout::Last ? "channels-last" : "channels-first";
}

bool Activation::invertible() const noexcept {
  switch (kind) {
    case ActivationKind::Identity: return true;
    case ActivationKind::LeakyRelu: return alpha > 0;
    case ActivationKind::Elu: return alpha > 0;
    default: return false;
  }
}

void Activation::check(const std::string& op) const {
  switch (kind) {
    case ActivationKind::Identity:
    case ActivationKind::Relu: return;
    case ActivationKind::LeakyRelu:
      SYNCBN_CHECK(std::isfinite(alpha) && alpha >= 0, op, ": activation leaky_relu slope ", alpha,
                   ", expected a finite slope >= 0");
      return;
    case ActivationKind::Elu:
      SYNCBN_CHECK(std::isfinite(alpha) && alpha > 0, op, ": activation elu alpha ", alpha,
                   ", expected a finite alpha > 0");
      return;
  }
  SYNCBN_THROW(InvalidArgument, op, ": activation kind ", static_cast<int>(kind),
               ", expected identity, relu, leaky_relu or elu");
}

std::string Activation::name() const {
  char buffer[48];
  switch (kind) {
    case ActivationKind::Identity: return "identity";
    case ActivationKind::Relu: return "relu";
    case ActivationKind::LeakyRelu: std::snprintf(buffer, sizeof buffer, "leaky_relu(%g)", alpha); return buffer;
    case ActivationKind::Elu: std::snprintf(buffer, sizeof buffer, "elu(%g)", alpha); return buffer;
  }
  return "unknown";
}

Tensor to_channels_last(const Tensor& x) {
  SYNCBN_CHECK(x.defined() && x.rank() >= 2, "to_channels_last: expected a tensor of rank >= 2 (N, C, ...), got ",
               x.defined() ? x.shape() : Shape{});
  std::int64_t l = 1;
  for (int i = 2; i < x.rank(); ++i) l *= x.size(i);
  return swap_last_two(x, x.size(1), l, permuted_shape(x.shape(), ChannelLayout::First));
}

Tensor to_channels_first(const Tensor& x) {
  SYNCBN_CHECK(x.defined() && x.rank() >= 2, "to_channels_first: expected a tensor of rank >= 2 (N, ..., C), got ",
               x.defined() ? x.shape() : Shape{});
  std::int64_t l = 1;
  for (int i = 1; i + 1 < x.rank(); ++i) l *= x.size(i);
  return swap_last_two(x, l, x.size(x.rank() - 1), permuted_shape(x.shape(), ChannelLayout::Last));
}

ChannelMoments batch_norm_moments(const Tensor& x, ChannelLayout layout) {
  const auto [n, c, l] = check_input(x, "batch_norm_moments", layout);
  const Device device = x.device();
  ChannelMoments out{n * l, channel_tensor(c, device), channel_tensor(c, device)};
  kernels(device).stats(device, x.dtype(), n, c, l, x.raw_data(), out.mean.data<double>(), out.m2.data<double>());
  return out;
}

ChannelMoments merge_moments(std::span<const ChannelMoments> parts, Device device) {
  constexpr const char* op = "merge_moments";
  SYNCBN_CHECK(!parts.empty() && parts.size() <= static_cast<std::size_t>(kMaxReplicas), op, ": ", parts.size(),
               " parts, expected 1 to ", kMaxReplicas);
  device.check_available();
  const std::int64_t c = parts.front().mean.defined() ? parts.front().mean.numel() : 0;
  std::vector<std::int64_t> counts;
  std::vector<Tensor> copies;  // parts that had to be brought to `device`
  std::vector<const double*> mean_ptrs, m2_ptrs;
  counts.reserve(parts.size());
  mean_ptrs.reserve(parts.size());
  m2_ptrs.reserve(parts.size());
  std::int64_t total = 0;
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const ChannelMoments& p = parts[k];
    SYNCBN_CHECK(p.count >= 0, op, ": part ", k, " has count ", p.count, ", expected >= 0");
    check_channels(p.mean, c, p.mean.defined() ? p.mean.device() : device, op, "a part's mean");
    check_channels(p.m2, c, p.mean.device(), op, "a part's m2");
    counts.push_back(p.count);
    total += p.count;
    // Parts in the same memory (any CPU device, the same GPU) are read in
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
  ChannelMoments out{total, channel_tensor(c, device), channel_tensor(c, device)};
  kernels(device).merge_stats(device, c, static_cast<int>(parts.size()), counts.data(), mean_ptrs.data(),
                              m2_ptrs.data(), out.mean.data<double>(), out.m2.data<double>());
  return out;
}

void HostMoments::merge(std::int64_t part_count, std::span<const double> part_mean, std::span<const double> part_m2) {
  SYNCBN_CHECK(part_count >= 0, "HostMoments::merge: count ", part_count, ", expected >= 0");
  SYNCBN_CHECK(part_mean.size() == part_m2.size(), "HostMoments::merge: ", part_mean.size(), " means and ",
               part_m2.size(), " M2 values, expected as many of each");
  if (mean.empty() && count == 0) {
    mean.assign(part_mean.size(), 0.0);
    m2.assign(part_m2.size(), 0.0);
  }
  SYNCBN_CHECK(part_mean.size() == mean.size(), "HostMoments::merge: a part of ", part_mean.size(),
               " channels, expected ", mean.size());
  if (part_count == 0) return;
  const std::int64_t total = count + part_count;
  // From the empty state: weight 1 and cross 0 give the part's own bits.
  const double weight = static_cast<double>(part_count) / static_cast<double>(total);
  const double cross = static_cast<double>(count) * static_cast<double>(part_count) / static_cast<double>(total);
  for (std::size_t j = 0; j < mean.size(); ++j) {
    const double delta = part_mean[j] - mean[j];
    mean[j] += delta * weight;
    m2[j] += part_m2[j] + delta * delta * cross;
  }
  count = total;
}

BatchNormVariance batch_norm_variance(const ChannelMoments& merged, double eps, bool eps_clamp) {
  constexpr const char* op = "batch_norm_variance";
  check_eps(eps, op);
  SYNCBN_CHECK(merged.count >= 0, op, ": count is ", merged.count, ", expected >= 0");
  SYNCBN_CHECK(merged.m2.defined(), op, ": m2 is undefined, expected a float64 tensor of shape (C)");
  const Device device = merged.m2.device();
  const std::int64_t c = merged.m2.numel();
  check_channels(merged.m2, c, device, op, "m2");
  BatchNormVariance out{channel_tensor(c, device), channel_tensor(c, device)};
  kernels(device).finalize(device, c, merged.count, merged.m2.data<double>(), eps, eps_clamp,
                           out.invstd.data<double>(), out.unbiased_var.data<double>());
  return out;
}

Tensor batch_norm_invstd(const Tensor& var, double eps, bool eps_clamp) {
  constexpr const char* op = "batch_norm_invstd";
  check_eps(eps, op);
  SYNCBN_CHECK(var.defined() && var.rank() == 1, op, ": var must be a tensor of shape (C), got ",
               var.defined() ? var.shape() : Shape{});
  SYNCBN_CHECK(var.dtype() == DType::Float32 || var.dtype() == DType::Float64, op, ": var has dtype ",
               dtype_name(var.dtype()), ", expected float32 or float64");
  const Device device = var.device();
  const std::int64_t c = var.numel();
  const Tensor wide = var.dtype() == DType::Float64 ? var : var.to(DType::Float64);
  Tensor invstd = channel_tensor(c, device);
  Tensor unused = channel_tensor(c, device);
  // With count 1 the biased variance M2 / count is the variance itself.
  kernels(device).finalize(device, c, 1, wide.data<double>(), eps, eps_clamp, invstd.data<double>(),
                           unused.data<double>());
  return invstd;
}

void update_running_stats(const Tensor& running_mean, const Tensor& running_var, const Tensor& num_batches_tracked,
                          const Tensor& mean, const Tensor& unbiased_var, std::optional<double> momentum) {
  constexpr const char* op = "update_running_stats";
  SYNCBN_CHECK(!momentum || (*momentum >= 0 && *momentum <= 1), op, ": momentum is ", momentum.value_or(0),
               ", expected a value in [0, 1] or none");
  SYNCBN_CHECK(num_batches_tracked.defined(), op, ": num_batches_tracked is undefined, expected an int64 scalar");
  const RunningStats running = check_running(running_mean, running_var, op);
  const Device device = running.device;
  const std::int64_t c = running.channels;
  const DType param_dtype = running.dtype;
  SYNCBN_CHECK(num_batches_tracked.dtype() == DType::Int64 && num_batches_tracked.numel() == 1 &&
                   num_batches_tracked.device() == device,
               op, ": num_batches_tracked must be one int64 on ", device, ", got ", dtype_name(num_batches_tracked.dtype()),
               " ", num_batches_tracked.shape(), " on ", num_batches_tracked.device());
  check_channels(mean, c, device, op, "mean");
  check_channels(unbiased_var, c, device, op, "unbiased_var");
  kernels(device).update_running(device, param_dtype, c, momentum.value_or(-1.0), mean.data<double>(),
                                 unbiased_var.data<double>(), running_mean.raw_data(), running_var.raw_data(),
                                 num_batches_tracked.data<std::int64_t>());
}

RenormFactors batch_renorm_factors(const Tensor& mean, const Tensor& invstd, const Tensor& running_mean,
                                   const Tensor& running_var, double eps, bool eps_clamp, double rmax, double dmax) {
  constexpr const char* op = "batch_renorm_factors";
  check_eps(eps, op);
  SYNCBN_CHECK(rmax >= 1 && dmax >= 0, op, ": rmax ", rmax, ", dmax ", dmax, ", expected rmax >= 1 and dmax >= 0");
  const RunningStats running = check_running(running_mean, running_var, op);
  const Device device = running.device;
  const std::int64_t c = running.channels;
  const DType param_dtype = running.dtype;
  check_channels(mean, c, device, op, "mean");
  check_channels(invstd, c, device, op, "invstd");
  RenormFactors out{channel_tensor(c, device), channel_tensor(c, device)};
  kernels(device).renorm_factors(device, param_dtype, c, mean.data<double>(), invstd.data<double>(),
                                 running_mean.raw_data(), running_var.raw_data(), eps, eps_clamp, rmax, dmax,
                                 out.r.data<double>(), out.d.data<double>());
  return out;
}

Tensor batch_norm_coefficients(const Tensor& mean, const Tensor& invstd, const Tensor& weight, const Tensor& bias,
                               DType param_dtype) {
  constexpr const char* op = "batch_norm_coefficients";
  check_param_dtype(param_dtype, op);
  SYNCBN_CHECK(mean.defined(), op, ": mean is undefined, expected a float64 tensor of shape (C)");
  const Device device = mean.device();
  const std::int64_t c = mean.numel();
  check_channels(mean, c, device, op, "mean");
  check_channels(invstd, c, device, op, "invstd");
  check_optional_param(weight, c, param_dtype, device, op, "weight");
  check_optional_param(bias, c, param_dtype, device, op, "bias");
  Tensor coef = Tensor::empty(Shape{4 * c}, DType::Float64, device);
  kernels(device).forward_coefficients(device, param_dtype, c, mean.data<double>(), invstd.data<double>(),
                                       weight.defined() ? weight.raw_data() : nullptr,
                                       bias.defined() ? bias.raw_data() : nullptr, coef.data<double>());
  return coef;
}

Tensor batch_norm_relu_mask(const Tensor& x, const BatchNormForm& form) {
  constexpr const char* op = "batch_norm_relu_mask";
  const auto [n, c, l] = check_input(x, op, form.layout);
  check_form(form, op);
  if (!keeps_relu_mask(x, form)) return Tensor();
  return Tensor::empty(relu_mask_shape(n, c, l), DType::Int64, x.device());
}

Tensor batch_norm_apply(const Tensor& x, const Tensor& coefficients, const BatchNormForm& form,
                        const Tensor& relu_mask) {
  constexpr const char* op = "batch_norm_apply";
  const auto [n, c, l] = check_input(x, op, form.layout);
  check_form(form, op);
  check_coefficients(coefficients, c, 4, x.device(), op, "coefficients");
  std::uint8_t* const mask = relu_mask_of(relu_mask, x, form, n, c, l, op);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels(x.device()).apply(x.device(), x.dtype(), n, c, l, x.raw_data(), coefficients.data<double>(),
                            fusion_of(form, mask), y.raw_data());
  return y;
}

void batch_norm_apply_(const Tensor& x, const Tensor& coefficients, const BatchNormForm& form) {
  constexpr const char* op = "batch_norm_apply_";
  const auto [n, c, l] = check_input(x, op, form.layout);
  check_form(form, op);
  check_coefficients(coefficients, c, 4, x.device(), op, "coefficients");
  kernels(x.device()).apply(x.device(), x.dtype(), n, c, l, x.raw_data(), coefficients.data<double>(),
                            fusion_of(form), x.raw_data());
}

ChannelGradSums batch_norm_grad_sums(const Tensor& grad_output, const Tensor& saved, const Tensor& coefficients,
                                     const BatchNormForm& form, const Tensor& relu_mask) {
  constexpr const char* op = "batch_norm_grad_sums";
  const auto [n, c, l] = check_input(saved, op, form.layout, form.from_output ? "y" : "x");
  check_form(form, op);
  check_coefficients(coefficients, c, 4, saved.device(), op, "coefficients");
  std::uint8_t* const mask = relu_mask_of(relu_mask, saved, form, n, c, l, op);
  const Tensor dy = grad_in_layout(grad_output, saved, form, op);
  const Device device = saved.device();
  ChannelGradSums out{channel_tensor(c, device), channel_tensor(c, device), channel_tensor(c, device)};
  kernels(device).backward_reduce(device, saved.dtype(), n, c, l, dy.raw_data(), saved.raw_data(),
                                  coefficients.data<double>(), fusion_of(form, mask), out.sum_dy.data<double>(),
                                  out.sum_dy_xmu.data<double>(), out.sum_xmu.data<double>());
  return out;
}

// Note [The exact mean from the backward]
// sum(dz * (x - mean)) about a mean off by e moves by e * sum(dz): with
// mean(dz) far from 0, 8 replicas of 16k values per channel need the mean
// to about 1e-10 of the spread for grad_weight within 1e-5, which float32
// lanes in the forward's moments do not give (about 1e-8 there; float64
// lanes cost the forward 10-40%). The backward reads x anyway and widens it
// to float64 for its products, so it also sums x - mean there, and the
// group's total (exchanged with the other sums) gives the exact mean:
// mean + sum_xmu / count. The stages below take the sums about it, and dx
// too: (x - exact) = (x - mean) - sum_xmu / count folds into the
// coefficient a. The forward's own output moves by e * invstd, 1e-8 of it.

// sum_xmu of `sums`, or null where it is undefined (zero: no correction).
const double* sum_xmu_of(const ChannelGradSums& sums, std::int64_t c, Device device, const char* op,
                         const char* name) {
  if (!sums.sum_xmu.defined()) return nullptr;
  check_channels(sums.sum_xmu, c, device, op, name);
  return sums.sum_xmu.data<double>();
}

Tensor batch_norm_backward_coefficients(std::int64_t count, const Tensor& invstd, const Tensor& weight,
                                        const ChannelGradSums& total, DType param_dtype,
                                        std::optional<double> clamp_eps) {
  constexpr const char* op = "batch_norm_backward_coefficients";
  check_param_dtype(param_dtype, op);
  SYNCBN_CHECK(count >= 0, op, ": count is ", count, ", expected >= 0");
  SYNCBN_CHECK(invstd.defined(), op, ": invstd is undefined, expected a float64 tensor of shape (C)");
  const Device device = invstd.device();
  const std::int64_t c = invstd.numel();
  check_channels(invstd, c, device, op, "invstd");
  check_optional_param(weight, c, param_dtype, device, op, "weight");
  check_channels(total.sum_dy, c, device, op, "sum_dy");
  check_channels(total.sum_dy_xmu, c, device, op, "sum_dy_xmu");
  const double* sum_xmu = sum_xmu_of(total, c, device, op, "sum_xmu");
  SYNCBN_CHECK(!clamp_eps || *clamp_eps > 0, op, ": clamp_eps is ", clamp_eps.value_or(0), ", expected > 0 or none");
  Tensor coef_b = Tensor::empty(Shape{3 * c}, DType::Float64, device);
  kernels(device).backward_coefficients(device, param_dtype, c, count, clamp_eps.value_or(0.0), invstd.data<double>(),
                                        weight.defined() ? weight.raw_data() : nullptr, total.sum_dy.data<double>(),
                                        total.sum_dy_xmu.data<double>(), sum_xmu, coef_b.data<double>());
  return coef_b;
}

void batch_norm_param_grads(const Tensor& grad_weight, const Tensor& grad_bias, const Tensor& invstd,
                            const ChannelGradSums& part, const ChannelGradSums& total, std::int64_t count) {
  constexpr const char* op = "batch_norm_param_grads";
  SYNCBN_CHECK(invstd.defined(), op, ": invstd is undefined, expected a float64 tensor of shape (C)");
  SYNCBN_CHECK(count >= 0, op, ": count is ", count, ", expected >= 0");
  const Device device = invstd.device();
  const std::int64_t c = invstd.numel();
  check_channels(invstd, c, device, op, "invstd");
  check_channels(part.sum_dy, c, device, op, "sum_dy");
  check_channels(part.sum_dy_xmu, c, device, op, "sum_dy_xmu");
  const double* total_sum_xmu = count > 0 ? sum_xmu_of(total, c, device, op, "the total's sum_xmu") : nullptr;
  if (!grad_weight.defined() && !grad_bias.defined()) return;
  const DType param_dtype = grad_weight.defined() ? grad_weight.dtype() : grad_bias.dtype();
  check_param_dtype(param_dtype, op);
  check_optional_param(grad_weight, c, param_dtype, device, op, "grad_weight");
  check_optional_param(grad_bias, c, param_dtype, device, op, "grad_bias");
  kernels(device).accumulate_param_grads(device, param_dtype, c, invstd.data<double>(), part.sum_dy.data<double>(),
                                         part.sum_dy_xmu.data<double>(), total_sum_xmu, count,
                                         grad_weight.defined() ? grad_weight.raw_data() : nullptr,
                                         grad_bias.defined() ? grad_bias.raw_data() : nullptr);
}

Tensor batch_norm_backward_apply(const Tensor& grad_output, const Tensor& saved, const Tensor& coefficients,
                                 const Tensor& backward_coefficients, const BatchNormForm& form,
                                 const Tensor& relu_mask) {
  constexpr const char* op = "batch_norm_backward_apply";
  const auto [n, c, l] = check_input(saved, op, form.layout, form.from_output ? "y" : "x");
  check_form(form, op);
  check_coefficients(coefficients, c, 4, saved.device(), op, "coefficients");
  check_coefficients(backward_coefficients, c, 3, saved.device(), op, "backward_coefficients");
  std::uint8_t* const mask = relu_mask_of(relu_mask, saved, form, n, c, l, op);
  const Tensor dy = grad_in_layout(grad_output, saved, form, op);
  Tensor dx = Tensor::empty(saved.shape(), saved.dtype(), saved.device());
  kernels(saved.device()).backward_apply(saved.device(), saved.dtype(), n, c, l, dy.raw_data(), saved.raw_data(),
                                         coefficients.data<double>(), backward_coefficients.data<double>(),
                                         fusion_of(form, mask), dx.raw_data());
  return dx;
}

}  // namespace syncbn::core
