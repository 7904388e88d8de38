#pragma once
// Learning-rate schedules (PyTorch's closed forms): StepLR, MultiStepLR,
// CosineAnnealingLR, and a linear warm-up in front of any of them.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/optim/optimizer.hpp"

namespace syncbn::optim {

/// The base of the schedules. A schedule sets the lr of every parameter
/// group of its optimizer to lr_at(last_epoch, base lr of the group), where
/// the base lrs are the groups' lrs when the schedule was made.
///
/// As in PyTorch, construction counts as epoch 0 (last_epoch() == 0) and
/// sets every group's lr to its epoch-0 value; each step() advances
/// last_epoch by one and sets the lrs of the new epoch. Whether an "epoch"
/// is an epoch or an iteration is the caller's choice: call step() once per
/// epoch, or once per iteration with the schedule's lengths in iterations.
/// Unlike PyTorch's chainable forms, every lr is the closed form of the
/// schedule, so two schedules on one optimizer overwrite each other; compose
/// them with LinearWarmup instead.
///
/// The optimizer must outlive the schedule. Thread safety: one thread at a
/// time, with the optimizer.
class LRSchedule {
 public:
  virtual ~LRSchedule() = default;
  LRSchedule(const LRSchedule&) = delete;
  LRSchedule& operator=(const LRSchedule&) = delete;

  /// "StepLR", "MultiStepLR", ...: how errors name the schedule.
  const std::string& name() const noexcept { return name_; }
  /// The optimizer whose learning rates this schedule sets.
  Optimizer& optimizer() const noexcept { return *optimizer_; }

  /// Advances one epoch (or iteration) and sets every group's lr.
  void step();
  /// The epochs (or iterations) stepped so far; 0 after construction.
  std::int64_t last_epoch() const noexcept { return last_epoch_; }
  /// The lr this schedule set last, per group.
  const std::vector<double>& get_last_lr() const noexcept { return last_lr_; }
  /// The groups' lrs when the schedule was made, per group.
  const std::vector<double>& base_lrs() const noexcept { return base_lrs_; }

  /// The schedule's lr at `epoch` (>= 0) for a group whose base lr is
  /// `base_lr` (the closed form; changes nothing).
  virtual double lr_at(std::int64_t epoch, double base_lr) const = 0;

  /// The state: "last_epoch" (int64 rank 0) and "base_lrs.<g>" for every
  /// group g (float64 rank 0), on the CPU.
  StateDict state_dict() const;
  /// Restores a state from state_dict() of a schedule of the same kind on an
  /// optimizer with as many groups, and sets every group's lr to its value
  /// at the restored epoch. Everything is checked first (every name known
  /// and given once, dtypes and ranks as above, last_epoch >= 0, base lrs
  /// >= 0); InvalidArgument naming the entry otherwise, changing nothing.
  void load_state_dict(const StateDict& state);

 protected:
  /// Records the optimizer's lrs as the base lrs. Does not set any lr:
  /// the derived constructor calls start() once its options are checked.
  LRSchedule(std::string name, Optimizer& optimizer);
  /// With the given base lrs (one per group of the optimizer).
  LRSchedule(std::string name, Optimizer& optimizer, std::vector<double> base_lrs);
  /// Sets the lrs of epoch 0.
  void start();

 private:
  void apply();  // sets the lrs of last_epoch_

  std::string name_;
  Optimizer* optimizer_;
  std::vector<double> base_lrs_;
  std::int64_t last_epoch_ = 0;
  std::vector<double> last_lr_;
};

/// lr = base_lr * gamma^floor(epoch / step_size) (torch.optim.lr_scheduler.StepLR).
class StepLR : public LRSchedule {
 public:
  /// InvalidArgument unless step_size >= 1 and gamma is finite and >= 0.
  StepLR(Optimizer& optimizer, std::int64_t step_size, double gamma = 0.1);
  double lr_at(std::int64_t epoch, double base_lr) const override;

 private:
  std::int64_t step_size_;
  double gamma_;
};

/// lr = base_lr * gamma^(the number of milestones <= epoch)
/// (torch.optim.lr_scheduler.MultiStepLR: milestones in any order; one given
/// twice decays twice).
class MultiStepLR : public LRSchedule {
 public:
  /// InvalidArgument unless every milestone is >= 0 and gamma is finite
  /// and >= 0.
  MultiStepLR(Optimizer& optimizer, std::vector<std::int64_t> milestones, double gamma = 0.1);
  double lr_at(std::int64_t epoch, double base_lr) const override;

 private:
  std::vector<std::int64_t> milestones_;  // sorted
  double gamma_;
};

/// lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
/// (torch.optim.lr_scheduler.CosineAnnealingLR's closed form; past T_max the
/// cosine goes on, back up towards base_lr).
class CosineAnnealingLR : public LRSchedule {
 public:
  /// InvalidArgument unless T_max >= 1 and eta_min is finite and >= 0.
  CosineAnnealingLR(Optimizer& optimizer, std::int64_t T_max, double eta_min = 0.0);
  double lr_at(std::int64_t epoch, double base_lr) const override;

 private:
  std::int64_t t_max_;
  double eta_min_;
};

/// A linear warm-up in front of another schedule (PyTorch's
/// SequentialLR([LinearLR(start_factor, 1.0, warmup_steps), inner],
/// milestones=[warmup_steps])): for epoch < warmup_steps,
///   lr = base_lr * (start_factor + (1 - start_factor) * epoch / warmup_steps),
/// from then on the inner schedule's lr at epoch - warmup_steps (so the
/// inner schedule starts at its epoch 0 when the warm-up ends: a cosine's
/// T_max counts after the warm-up). The inner schedule's optimizer and base
/// lrs are the warm-up's; the warm-up owns it and computes its lrs with
/// inner().lr_at (its own last_epoch and get_last_lr stay at epoch 0).
class LinearWarmup : public LRSchedule {
 public:
  /// InvalidArgument unless `inner` is set, warmup_steps >= 1 and
  /// 0 <= start_factor <= 1.
  LinearWarmup(std::unique_ptr<LRSchedule> inner, std::int64_t warmup_steps, double start_factor = 1.0 / 3.0);
  double lr_at(std::int64_t epoch, double base_lr) const override;
  /// The schedule after the warm-up.
  const LRSchedule& inner() const noexcept { return *inner_; }

 private:
  std::unique_ptr<LRSchedule> inner_;
  std::int64_t warmup_steps_;
  double start_factor_;
};

}  // namespace syncbn::optim
