// SyncBatchNorm1d/2d/3d for torch::nn: the module state as
// torch::nn::BatchNorm has it, and an autograd function whose forward and
// backward run syncbn's batch-norm stages on views of the torch tensors and
// exchange through comm::StatsExchange (Note [The bridge's autograd function]),
// on the CPU or a GPU (Note [The bridge on CUDA]).

#include "syncbn/libtorch/sync_batch_norm.hpp"

#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/init.h>

#include "syncbn/core/batch_norm.hpp"
#include "syncbn/error.hpp"
#include "stream_order.hpp"
#include "tensor_views.hpp"

namespace syncbn::libtorch {
namespace {

using detail::to_torch;
using detail::view_of;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Note [The bridge's autograd function]
// Each replica thread runs its own forward, loss and backward (a runner's
// replicas never share one backward): the forward exchanges the replica's
// moments and the backward its gradient sums through the layer's
// StatsExchange, which waits for the other replicas of the same layer and
// pass. The stages read and write the torch tensors' memory through syncbn
// views, and the results are torch tensors over syncbn's storage, so
// nothing is copied in between. What the backward needs beyond the saved
// tensors (the exchange, the coefficients, the group's count) travels in a
// capsule of the autograd context.

// The forward's arguments beyond the tensors autograd tracks.
struct ForwardArgs {
  std::string op;                                  // "SyncBatchNorm2d(64)::forward"
  std::shared_ptr<comm::StatsExchange> exchange;   // batch statistics through it; null: running statistics
  torch::Tensor running_mean, running_var, num_batches_tracked;
  bool track = false;  // training with running statistics: update them
  std::optional<double> momentum;
  double eps = 1e-5;
};

// What the backward of one forward needs besides the saved tensors.
struct Saved : torch::CustomClassHolder {
  std::string op;
  std::shared_ptr<comm::StatsExchange> exchange;  // null: the statistics were constants
  comm::JobLayout layout;
  Tensor coefficients;
  Tensor invstd;
  std::int64_t count = 0;  // the group's values per channel; 0 for constant statistics
  DType param_dtype = DType::Float32;
};

// float64 parameters for float64 input, float32 for the others.
torch::ScalarType param_type_for(const torch::Tensor& input) {
  return input.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// `t` in the parameters' dtype, contiguous (itself where it already is);
// undefined for the empty tensor that stands for no affine parameter.
torch::Tensor as_param(const torch::Tensor& t, torch::ScalarType type) {
  return t.defined() && t.numel() > 0 ? t.to(type).contiguous() : torch::Tensor();
}

class BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias, const ForwardArgs* args) {
    // torch's work first (Note [The bridge on CUDA]): the stages then read
    // and write these tensors.
    const torch::Tensor x = input.contiguous();
    const torch::ScalarType param_type = param_type_for(x);
    const torch::Tensor w = as_param(weight, param_type), b = as_param(bias, param_type);
    const bool track = args->exchange != nullptr && args->track;
    // Module::to(dtype) converts num_batches_tracked too: counted in int64, stored back.
    const torch::Tensor batches = track ? args->num_batches_tracked.to(torch::kLong).contiguous() : torch::Tensor();
    const Device device = detail::device_of(x.device(), args->op, "input");
    const detail::SyncbnStages stages(x);
    const Tensor sx = view_of(x, args->op, "input");
    auto saved = c10::make_intrusive<Saved>();
    saved->op = args->op;
    saved->param_dtype = param_type == torch::kDouble ? DType::Float64 : DType::Float32;
    Tensor mean;
    if (args->exchange != nullptr) {
      const std::string op = args->op;
      const double eps = args->eps;
      const comm::Finalize finalize = [op, eps](const core::ChannelMoments& merged, comm::GroupPlace) {
        SYNCBN_CHECK(merged.count != 1, op, ": 1 value per channel in the batch, expected more than 1 for batch "
                     "statistics (torch::nn::BatchNorm refuses it too)");
        auto [invstd, unbiased_var] = core::batch_norm_variance(merged, eps, false);
        return comm::GroupStats{merged.count, merged.mean, std::move(invstd), std::move(unbiased_var)};
      };
      comm::MergedStats merged = args->exchange->merge({core::batch_norm_moments(sx)}, 0, device, finalize);
      if (track && merged.first_group)
        core::update_running_stats(view_of(args->running_mean, args->op, "running_mean"),
                                   view_of(args->running_var, args->op, "running_var"),
                                   view_of(batches, args->op, "num_batches_tracked"), merged.first_group->mean,
                                   merged.first_group->unbiased_var, args->momentum);
      comm::GroupStats& mine = merged.per_segment.front();
      mean = std::move(mine.mean);
      saved->invstd = std::move(mine.invstd);
      saved->count = mine.count;
      saved->layout = std::move(merged.layout);
      saved->exchange = args->exchange;
    } else {
      const Tensor running_var = view_of(args->running_var, args->op, "running_var");
      mean = view_of(args->running_mean, args->op, "running_mean").to(DType::Float64);
      saved->invstd = core::batch_norm_invstd(running_var, args->eps, false);
    }
    saved->coefficients = core::batch_norm_coefficients(mean, saved->invstd, view_of(w, args->op, "weight"),
                                                        view_of(b, args->op, "bias"), saved->param_dtype);
    torch::Tensor y = to_torch(core::batch_norm_apply(sx, saved->coefficients));
    stages.done();
    if (track && !batches.is_same(args->num_batches_tracked)) args->num_batches_tracked.copy_(batches);
    ctx->save_for_backward({x, w});
    ctx->saved_data["state"] = c10::IValue::make_capsule(saved);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = c10::static_intrusive_pointer_cast<Saved>(ctx->saved_data["state"].toCapsule());
    const variable_list tensors = ctx->get_saved_variables();
    const torch::Tensor& x = tensors[0];
    const torch::Tensor& w = tensors[1];
    const bool input_grad = ctx->needs_input_grad(0);
    const bool param_grads = w.defined() && (ctx->needs_input_grad(1) || ctx->needs_input_grad(2));
    // torch's work first (Note [The bridge on CUDA]).
    const torch::Tensor dy = grads[0].to(x.scalar_type()).contiguous();
    torch::Tensor dw, db;
    if (param_grads) {
      dw = torch::zeros({w.size(0)}, w.options());
      db = torch::zeros({w.size(0)}, w.options());
    }
    const detail::SyncbnStages stages(x);
    const Device device = detail::device_of(x.device(), saved->op, "input");
    const Tensor sx = view_of(x, saved->op, "input"), sdy = view_of(dy, saved->op, "grad_output");
    const core::ChannelGradSums local = core::batch_norm_grad_sums(sdy, sx, saved->coefficients);
    // With batch statistics the mean and variance depend on the whole
    // batch, so the group's sums enter dx: exchanged only when dx is
    // needed (every replica of a layer needs it or none does). Without
    // them, each part's sums about the forward's mean, which is the
    // group's to the precision of the coefficients.
    const bool exchange = saved->exchange != nullptr && input_grad;
    const core::ChannelGradSums total =
        exchange ? saved->exchange->sum({local}, 0, device, saved->layout).front() : local;
    const std::int64_t count = exchange ? saved->count : 0;
    torch::Tensor dx;
    if (input_grad) {
      const Tensor coef_b = core::batch_norm_backward_coefficients(count, saved->invstd, view_of(w, saved->op, "weight"),
                                                                   total, saved->param_dtype);
      dx = to_torch(core::batch_norm_backward_apply(sdy, sx, saved->coefficients, coef_b));
    }
    if (param_grads)
      core::batch_norm_param_grads(view_of(dw, saved->op, "grad_weight"), view_of(db, saved->op, "grad_bias"),
                                   saved->invstd, local, total, count);
    stages.done();
    return {dx, ctx->needs_input_grad(1) ? dw : torch::Tensor(), ctx->needs_input_grad(2) ? db : torch::Tensor(),
            torch::Tensor()};
  }
};

const char* dims_text(int spatial_dims) {
  switch (spatial_dims) {
    case 1: return "2 or 3 (N, C) or (N, C, L)";
    case 2: return "4 (N, C, H, W)";
    default: return "5 (N, C, D, H, W)";
  }
}

}  // namespace

std::shared_ptr<comm::StatsExchange> Synchronized::make_exchange(bool with_processes) const {
  return std::make_shared<comm::StatsExchange>(comm::StatsExchange::Options{
      label(), sync_.timeout, channels(), with_processes ? sync_.process_group : nullptr});
}

template <class Derived>
SyncBatchNormImplBase<Derived>::SyncBatchNormImplBase(const torch::nn::BatchNormOptions& options_, SyncOptions sync)
    : Synchronized(std::move(sync)), options(options_) {
  const std::string kind = Derived::kKind;
  SYNCBN_CHECK(options.num_features() > 0, kind, ": num_features ", options.num_features(), ", expected > 0");
  SYNCBN_CHECK(options.eps() >= 0, kind, ": eps ", options.eps(), ", expected >= 0");
  SYNCBN_CHECK(!options.momentum() || (*options.momentum() >= 0 && *options.momentum() <= 1), kind, ": momentum ",
               options.momentum().value_or(0), ", expected 0 to 1, or none for the cumulative average");
  SYNCBN_CHECK(sync_.timeout.count() >= 0, kind, ": timeout ", sync_.timeout.count(),
               " ms, expected >= 0 (0 waits forever)");
  reset();
}

template <class Derived>
void SyncBatchNormImplBase<Derived>::reset() {
  const std::int64_t c = options.num_features();
  // The names and initial values of torch::nn::BatchNorm, so that state
  // dicts and checkpoints move between the two.
  if (options.affine()) {
    weight = this->register_parameter("weight", torch::empty({c}));
    bias = this->register_parameter("bias", torch::empty({c}));
  } else {
    weight = this->register_parameter("weight", torch::Tensor(), /*requires_grad=*/false);
    bias = this->register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  }
  if (options.track_running_stats()) {
    running_mean = this->register_buffer("running_mean", torch::zeros({c}));
    running_var = this->register_buffer("running_var", torch::ones({c}));
    num_batches_tracked = this->register_buffer("num_batches_tracked", torch::tensor(0, torch::dtype(torch::kLong)));
  } else {
    running_mean = this->register_buffer("running_mean", torch::Tensor());
    running_var = this->register_buffer("running_var", torch::Tensor());
    num_batches_tracked = this->register_buffer("num_batches_tracked", torch::Tensor());
  }
  reset_parameters();
  // A clone is not linked to any replica: its own exchanges.
  exchange_ = make_exchange(true);
  own_exchange_ = make_exchange(false);
  training_forwards_ = 0;
}

template <class Derived>
void SyncBatchNormImplBase<Derived>::reset_running_stats() {
  if (!options.track_running_stats()) return;
  torch::NoGradGuard no_grad;
  running_mean.zero_();
  running_var.fill_(1);
  num_batches_tracked.zero_();
}

template <class Derived>
void SyncBatchNormImplBase<Derived>::reset_parameters() {
  reset_running_stats();
  if (!options.affine()) return;
  torch::nn::init::ones_(weight);
  torch::nn::init::zeros_(bias);
}

template <class Derived>
std::string SyncBatchNormImplBase<Derived>::label() const {
  return std::string(Derived::kKind) + "(" + std::to_string(options.num_features()) + ")";
}

template <class Derived>
void SyncBatchNormImplBase<Derived>::pretty_print(std::ostream& stream) const {
  stream << std::boolalpha << "syncbn::libtorch::" << Derived::kKind << "(" << options.num_features()
         << ", eps=" << options.eps() << ", momentum=";
  if (options.momentum())
    stream << *options.momentum();
  else
    stream << "None";
  stream << ", affine=" << options.affine() << ", track_running_stats=" << options.track_running_stats() << ")";
}

template <class Derived>
void SyncBatchNormImplBase<Derived>::check_input(const torch::Tensor& input) const {
  const std::string op = label() + "::forward";
  SYNCBN_CHECK(input.defined(), op, ": the input is undefined, expected a tensor");
  const int d = Derived::kSpatialDims;
  const auto dims = input.dim();
  const bool rank_ok = d == 1 ? (dims == 2 || dims == 3) : dims == d + 2;
  SYNCBN_CHECK(rank_ok, op, ": input of ", dims, " dimensions, expected ", dims_text(d));
  SYNCBN_CHECK(input.size(1) == options.num_features(), op, ": input of ", input.size(1),
               " channels (dimension 1), expected ", options.num_features());
  const auto type = input.scalar_type();
  SYNCBN_CHECK(type == torch::kFloat || type == torch::kDouble || type == torch::kHalf || type == torch::kBFloat16, op,
               ": input of dtype ", c10::toString(type), ", expected float, double, half or bfloat16");
  detail::device_of(input.device(), op, "input");
  // The module's tensors where the input is, as torch::nn::BatchNorm needs.
  for (const torch::Tensor* t : {&weight, &bias, &running_mean, &running_var})
    SYNCBN_CHECK(!t->defined() || t->device() == input.device(), op, ": input on ", input.device().str(),
                 " and the module on ", t->device().str(), ", expected both on one device (module->to(device))");
  if (options.track_running_stats())
    for (const torch::Tensor* t : {&running_mean, &running_var})
      SYNCBN_CHECK(t->scalar_type() == torch::kFloat || t->scalar_type() == torch::kDouble, op,
                   ": running statistics of dtype ", c10::toString(t->scalar_type()),
                   ", expected float or double (keep the module in float32 for half-precision input)");
}

template <class Derived>
torch::Tensor SyncBatchNormImplBase<Derived>::forward(const torch::Tensor& input) {
  check_input(input);
  const bool training = this->is_training();
  ForwardArgs args;
  args.op = label() + "::forward";
  // Training exchanges; eval uses the running statistics, or without them
  // the replica's own batch (never exchanged).
  if (training || !options.track_running_stats()) args.exchange = training ? exchange_ : own_exchange_;
  args.track = training && options.track_running_stats();
  args.running_mean = running_mean;
  args.running_var = running_var;
  args.num_batches_tracked = num_batches_tracked;
  if (options.momentum()) args.momentum = *options.momentum();  // c10::optional in libtorch 1.13
  args.eps = options.eps();
  // libtorch 1.13's Function::apply refuses undefined tensors: without
  // affine parameters, empty ones stand for them (num_features > 0).
  const torch::Tensor none = options.affine() ? torch::Tensor() : torch::empty({0}, input.options());
  torch::Tensor y =
      BatchNormFunction::apply(input, options.affine() ? weight : none, options.affine() ? bias : none, &args);
  if (training) ++training_forwards_;
  return y;
}

template class SyncBatchNormImplBase<SyncBatchNorm1dImpl>;
template class SyncBatchNormImplBase<SyncBatchNorm2dImpl>;
template class SyncBatchNormImplBase<SyncBatchNorm3dImpl>;

std::vector<std::shared_ptr<comm::ReplicaRendezvous>> synchronize_replicas(
    const std::vector<std::shared_ptr<torch::nn::Module>>& replicas) {
  constexpr const char* op = "synchronize_replicas";
  SYNCBN_CHECK(!replicas.empty(), op, ": no replicas, expected 1 or more");
  std::vector<std::vector<Synchronized*>> layers;
  for (std::size_t k = 0; k < replicas.size(); ++k) {
    SYNCBN_CHECK(replicas[k] != nullptr, op, ": replica ", k, " is null, expected a module");
    std::vector<Synchronized*>& mine = layers.emplace_back();
    for (const auto& m : replicas[k]->modules(/*include_self=*/true))
      if (auto* s = dynamic_cast<Synchronized*>(m.get())) mine.push_back(s);
    SYNCBN_CHECK(mine.size() == layers.front().size(), op, ": replica ", k, " has ", mine.size(),
                 " synchronized batch norms, expected ", layers.front().size(), " as replica 0");
    for (std::size_t i = 0; i < mine.size(); ++i)
      SYNCBN_CHECK(mine[i]->channels() == layers.front()[i]->channels(), op, ": replica ", k, "'s ", mine[i]->label(),
                   " differs from replica 0's ", layers.front()[i]->label(), ", expected clones of one module");
  }
  std::vector<std::shared_ptr<comm::ReplicaRendezvous>> rendezvous;
  for (std::size_t i = 0; i < layers.front().size(); ++i) {
    // Replica 0 merges and alone talks to the other processes.
    auto lead = layers.front()[i]->make_exchange(true);
    rendezvous.push_back(lead->lead_replicas());
    std::vector<std::shared_ptr<comm::StatsExchange>> joined{lead};
    for (std::size_t k = 1; k < replicas.size(); ++k) {
      auto exchange = layers[k][i]->make_exchange(true);
      exchange->join_replicas(rendezvous.back(), static_cast<int>(k));
      joined.push_back(std::move(exchange));
    }
    for (std::size_t k = 0; k < replicas.size(); ++k) layers[k][i]->set_exchange(std::move(joined[k]));
  }
  return rendezvous;
}

}  // namespace syncbn::libtorch
