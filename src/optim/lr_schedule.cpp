// Learning-rate schedules: PyTorch's closed forms, applied per group.

#include "syncbn/optim/lr_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <optional>
#include <set>
#include <string_view>

#include "state_names.hpp"
#include "syncbn/error.hpp"

namespace syncbn::optim {
namespace {

std::vector<double> group_lrs(const Optimizer& optimizer) {
  std::vector<double> lrs;
  for (const Optimizer::Group& group : optimizer.param_groups()) lrs.push_back(group.lr);
  return lrs;
}

}  // namespace

LRSchedule::LRSchedule(std::string name, Optimizer& optimizer)
    : LRSchedule(std::move(name), optimizer, group_lrs(optimizer)) {}

LRSchedule::LRSchedule(std::string name, Optimizer& optimizer, std::vector<double> base_lrs)
    : name_(std::move(name)), optimizer_(&optimizer), base_lrs_(std::move(base_lrs)) {}

void LRSchedule::start() {
  last_epoch_ = 0;
  apply();
}

void LRSchedule::apply() {
  std::vector<double> lrs;
  for (const double base : base_lrs_) lrs.push_back(lr_at(last_epoch_, base));
  for (std::size_t g = 0; g < lrs.size(); ++g) optimizer_->set_lr(g, lrs[g]);
  last_lr_ = std::move(lrs);
}

void LRSchedule::step() {
  ++last_epoch_;
  apply();
}

StateDict LRSchedule::state_dict() const {
  StateDict out;
  out.emplace_back("last_epoch", Tensor::from_vector(std::vector<std::int64_t>{last_epoch_}, Shape{}));
  for (std::size_t g = 0; g < base_lrs_.size(); ++g)
    out.emplace_back("base_lrs." + std::to_string(g), Tensor::from_vector(std::vector<double>{base_lrs_[g]}, Shape{}));
  return out;
}

void LRSchedule::load_state_dict(const StateDict& state) {
  const std::string op = name_ + "::load_state_dict";
  std::optional<std::int64_t> epoch;
  std::vector<std::optional<double>> bases(base_lrs_.size());
  std::set<std::string> seen;
  for (const auto& [name, t] : state) {
    SYNCBN_CHECK(seen.insert(name).second, op, ": ", name, " is given twice, expected every entry once");
    const bool is_epoch = name == "last_epoch";
    const std::optional<std::size_t> group =
        name.rfind("base_lrs.", 0) == 0 ? detail::parse_index(std::string_view(name).substr(9)) : std::nullopt;
    SYNCBN_CHECK(is_epoch || group, op, ": ", name, " is not an entry of a schedule's state, expected last_epoch ",
                 "or base_lrs.<group>");
    SYNCBN_CHECK(is_epoch || *group < bases.size(), op, ": ", name, " names group ", group.value_or(0),
                 ", expected a group below ", bases.size());
    const DType dtype = is_epoch ? DType::Int64 : DType::Float64;
    SYNCBN_CHECK(t.defined() && t.dtype() == dtype && t.rank() == 0, op, ": ", name, " is ",
                 t.defined() ? dtype_name(t.dtype()) : "undefined", " ", t.shape(), ", expected a rank-0 ",
                 dtype_name(dtype), " tensor");
    if (is_epoch) {
      epoch = t.to_vector<std::int64_t>()[0];
      SYNCBN_CHECK(*epoch >= 0, op, ": last_epoch is ", *epoch, ", expected >= 0");
    } else {
      const double base = t.item();
      SYNCBN_CHECK(base >= 0, op, ": ", name, " is ", base, ", expected >= 0");
      bases[*group] = base;
    }
  }
  SYNCBN_CHECK(epoch.has_value(), op, ": last_epoch is missing, expected it");
  std::vector<double> new_bases;
  for (std::size_t g = 0; g < bases.size(); ++g) {
    SYNCBN_CHECK(bases[g].has_value(), op, ": base_lrs.", g, " is missing, expected the base lr of every group");
    new_bases.push_back(*bases[g]);
  }
  // The lrs of the restored epoch are computed before anything changes:
  // set_lr then cannot fail (each lr is >= 0 for bases >= 0).
  std::vector<double> lrs;
  for (const double base : new_bases) {
    lrs.push_back(lr_at(*epoch, base));
    SYNCBN_CHECK(lrs.back() >= 0, op, ": the lr at epoch ", *epoch, " is ", lrs.back(), ", expected >= 0");
  }
  base_lrs_ = std::move(new_bases);
  last_epoch_ = *epoch;
  for (std::size_t g = 0; g < lrs.size(); ++g) optimizer_->set_lr(g, lrs[g]);
  last_lr_ = std::move(lrs);
}

// ---- StepLR ----------------------------------------------------------------

StepLR::StepLR(Optimizer& optimizer, std::int64_t step_size, double gamma)
    : LRSchedule("StepLR", optimizer), step_size_(step_size), gamma_(gamma) {
  SYNCBN_CHECK(step_size >= 1, "StepLR: step_size is ", step_size, ", expected >= 1");
  SYNCBN_CHECK(std::isfinite(gamma) && gamma >= 0, "StepLR: gamma is ", gamma, ", expected a finite gamma >= 0");
  start();
}

double StepLR::lr_at(std::int64_t epoch, double base_lr) const {
  return base_lr * std::pow(gamma_, static_cast<double>(epoch / step_size_));
}

// ---- MultiStepLR -----------------------------------------------------------

MultiStepLR::MultiStepLR(Optimizer& optimizer, std::vector<std::int64_t> milestones, double gamma)
    : LRSchedule("MultiStepLR", optimizer), milestones_(std::move(milestones)), gamma_(gamma) {
  for (std::size_t i = 0; i < milestones_.size(); ++i)
    SYNCBN_CHECK(milestones_[i] >= 0, "MultiStepLR: milestone ", i, " is ", milestones_[i], ", expected >= 0");
  SYNCBN_CHECK(std::isfinite(gamma) && gamma >= 0, "MultiStepLR: gamma is ", gamma, ", expected a finite gamma >= 0");
  std::sort(milestones_.begin(), milestones_.end());
  start();
}

double MultiStepLR::lr_at(std::int64_t epoch, double base_lr) const {
  // bisect_right: the milestones reached by `epoch`, a repeated one counted twice.
  const auto reached = std::upper_bound(milestones_.begin(), milestones_.end(), epoch) - milestones_.begin();
  return base_lr * std::pow(gamma_, static_cast<double>(reached));
}

// ---- CosineAnnealingLR -----------------------------------------------------

CosineAnnealingLR::CosineAnnealingLR(Optimizer& optimizer, std::int64_t T_max, double eta_min)
    : LRSchedule("CosineAnnealingLR", optimizer), t_max_(T_max), eta_min_(eta_min) {
  SYNCBN_CHECK(T_max >= 1, "CosineAnnealingLR: T_max is ", T_max, ", expected >= 1");
  SYNCBN_CHECK(std::isfinite(eta_min) && eta_min >= 0, "CosineAnnealingLR: eta_min is ", eta_min,
               ", expected a finite eta_min >= 0");
  start();
}

double CosineAnnealingLR::lr_at(std::int64_t epoch, double base_lr) const {
  const double t = static_cast<double>(epoch) / static_cast<double>(t_max_);
  return eta_min_ + (base_lr - eta_min_) * (1 + std::cos(std::numbers::pi * t)) / 2;
}

// ---- LinearWarmup ----------------------------------------------------------

namespace {

const LRSchedule& checked_inner(const std::unique_ptr<LRSchedule>& inner) {
  SYNCBN_CHECK(inner != nullptr, "LinearWarmup: the inner schedule is null, expected a schedule");
  return *inner;
}

}  // namespace

LinearWarmup::LinearWarmup(std::unique_ptr<LRSchedule> inner, std::int64_t warmup_steps, double start_factor)
    : LRSchedule("LinearWarmup", checked_inner(inner).optimizer(), checked_inner(inner).base_lrs()),
      inner_(std::move(inner)),
      warmup_steps_(warmup_steps),
      start_factor_(start_factor) {
  SYNCBN_CHECK(warmup_steps >= 1, "LinearWarmup: warmup_steps is ", warmup_steps, ", expected >= 1");
  SYNCBN_CHECK(start_factor >= 0 && start_factor <= 1, "LinearWarmup: start_factor is ", start_factor,
               ", expected 0 <= start_factor <= 1");
  start();
}

double LinearWarmup::lr_at(std::int64_t epoch, double base_lr) const {
  if (epoch >= warmup_steps_) return inner_->lr_at(epoch - warmup_steps_, base_lr);
  // LinearLR's closed form with end_factor 1 and total_iters warmup_steps.
  return base_lr * (start_factor_ + (1 - start_factor_) * static_cast<double>(epoch) /
                                        static_cast<double>(warmup_steps_));
}

}  // namespace syncbn::optim
