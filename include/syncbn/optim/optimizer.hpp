#pragma once
// The common base of the optimizers: parameter groups with their own
// learning rate and weight decay, all-or-nothing steps, and the optimizer's
// state as named tensors for checkpoints.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "syncbn/nn/module.hpp"

namespace syncbn::optim {

/// Parameters given to an optimizer together, with options of their own
/// (PyTorch's `{'params': ..., 'lr': ...}`). An option left unset takes the
/// optimizer's (the options struct passed to its constructor); the other
/// options (momentum, betas, eps, ...) are the optimizer's for every group.
struct ParamGroup {
  ParamGroup() = default;
  /// E.g. {model->parameters(), 0.01} or {{&w, &b}, std::nullopt, 0.0}.
  ParamGroup(std::vector<nn::Parameter*> group_params, std::optional<double> group_lr = std::nullopt,
             std::optional<double> group_weight_decay = std::nullopt)
      : params(std::move(group_params)), lr(group_lr), weight_decay(group_weight_decay) {}

  std::vector<nn::Parameter*> params;
  std::optional<double> lr;
  std::optional<double> weight_decay;
};

/// What every optimizer constructor accepts (see also split_weight_decay).
/// Spell it out when writing groups in place, optim::ParamGroups{{...},
/// {...}}: a bare braced list of parameters, {&a, &b}, is one group.
using ParamGroups = std::vector<ParamGroup>;

/// Named tensors, in a fixed order: an optimizer's or a schedule's state.
using StateDict = std::vector<std::pair<std::string, Tensor>>;

/// The base of SGD, Adam and AdamW.
///
/// Parameters are held by pointer (take them from module.parameters() once
/// the module tree is final, e.g. after convert_sync_batchnorm) and numbered
/// across the groups in order: group 0's parameters first. A parameter may
/// appear once only. The per-parameter state (momentum buffers, moments,
/// step counts) is created at the first step, on the parameter's device.
///
/// step() checks every parameter (value and gradient defined, float32 or
/// float64, the gradient of the value's shape, dtype and device, the state
/// of the value's shape, dtype and device) before it updates any, so a step
/// updates all parameters or none. Errors name the entry point, e.g.
/// "Adam::step: ...".
///
/// Thread safety: one thread at a time (the parameters are the model's).
class Optimizer {
 public:
  /// A parameter group as the optimizer holds it: every option resolved.
  struct Group {
    std::vector<nn::Parameter*> params;
    double lr;
    double weight_decay;
  };

  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// "SGD", "Adam", "AdamW": how errors name the optimizer.
  const std::string& name() const noexcept { return name_; }

  /// One update of every parameter, all or nothing (see the class comment).
  void step();
  /// Sets every gradient to zero (PyTorch's zero_grad(set_to_none=False)).
  void zero_grad();

  /// The groups with their current options (read the lr of group i as
  /// param_groups()[i].lr; change it with set_lr(i, lr)).
  const std::vector<Group>& param_groups() const noexcept { return groups_; }
  /// The number of parameters over all groups.
  std::size_t num_params() const noexcept { return states_.size(); }

  /// The learning rate of every group. InvalidArgument when the groups have
  /// different ones (read param_groups()[i].lr then) or there is no group.
  double lr() const;
  /// Sets the learning rate of every group (e.g. between steps, as the
  /// schedules do). InvalidArgument unless lr >= 0; nothing changes then.
  void set_lr(double lr);
  /// Sets the learning rate of group `group`. InvalidArgument unless the
  /// group exists and lr >= 0.
  void set_lr(std::size_t group, double lr);

  /// The optimizer's state as named tensors (copies, which later steps do
  /// not change), in this order:
  ///   "state.<i>.<name>" for every parameter i (numbered across the groups)
  ///     that has state: the optimizer's buffers ("momentum_buffer";
  ///     "exp_avg", "exp_avg_sq", "max_exp_avg_sq") with the parameter's
  ///     shape, dtype and device, and for Adam and AdamW "state.<i>.step", the
  ///     parameter's step count as an int64 rank-0 tensor on the CPU;
  ///   "param_groups.<g>.lr" and "param_groups.<g>.weight_decay" for every
  ///     group g, float64 rank-0 tensors on the CPU.
  StateDict state_dict() const;
  /// Restores a state from state_dict() of an optimizer of the same kind and
  /// options over parameters of the same shapes and dtypes, in the same
  /// groups. Everything is checked before anything changes: every name known
  /// and given once; every group's lr and weight_decay given (float64 rank 0,
  /// >= 0); for each parameter either no state or all of it, buffers of the
  /// parameter's shape and dtype (copied onto the parameter's device), step
  /// counts int64 rank 0 and >= 0. InvalidArgument naming the entry and what
  /// was expected otherwise; the optimizer is then unchanged.
  void load_state_dict(const StateDict& state);

 protected:
  /// The per-parameter state: `buffers` holds one tensor per name of
  /// buffer_names() once the parameter has state (empty before).
  struct ParamState {
    std::int64_t step = 0;
    std::vector<Tensor> buffers;
  };

  /// Resolves the groups (unset options from the defaults) and checks them:
  /// InvalidArgument, naming `name`, for a null or repeated parameter or an
  /// lr or weight_decay < 0.
  Optimizer(std::string name, ParamGroups groups, double default_lr, double default_weight_decay);

  /// Wraps a plain parameter list as one group with the default options.
  static ParamGroups one_group(std::vector<nn::Parameter*> params);

  /// The names of the buffers each parameter's state holds, for the current
  /// options (SGD without momentum: none).
  virtual std::vector<std::string> buffer_names() const = 0;
  /// Whether the state counts steps per parameter ("state.<i>.step").
  virtual bool counts_steps() const = 0;
  /// Updates one parameter (already checked) of group `group` with its state.
  virtual void update(const Group& group, nn::Parameter& param, ParamState& state) = 0;

 private:
  void check_before_step() const;

  std::string name_;
  std::vector<Group> groups_;
  std::vector<ParamState> states_;  // one per parameter, numbered across the groups
};

}  // namespace syncbn::optim
