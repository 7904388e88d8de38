// The optimizer base: groups, the all-or-nothing step, and the state as
// named tensors.

#include "syncbn/optim/optimizer.hpp"

#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "state_names.hpp"
#include "syncbn/error.hpp"

namespace syncbn::optim {
namespace {

// "a, b or c": the names a state entry may have, for error messages.
std::string name_list(const std::vector<std::string>& names) {
  std::ostringstream out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out << (i + 1 == names.size() ? " or " : ", ");
    out << names[i];
  }
  return out.str();
}

// "state.<i>.<name>" or "param_groups.<g>.<name>" split into its parts.
struct EntryName {
  std::string_view section;
  std::size_t index = 0;
  std::string_view field;
};

std::optional<EntryName> split_entry_name(std::string_view name) {
  const std::size_t first = name.find('.');
  if (first == std::string_view::npos) return std::nullopt;
  const std::size_t second = name.find('.', first + 1);
  if (second == std::string_view::npos) return std::nullopt;
  const auto index = detail::parse_index(name.substr(first + 1, second - first - 1));
  if (!index) return std::nullopt;
  return EntryName{name.substr(0, first), *index, name.substr(second + 1)};
}

Tensor scalar_double(double value) { return Tensor::from_vector(std::vector<double>{value}, Shape{}); }
Tensor scalar_int64(std::int64_t value) { return Tensor::from_vector(std::vector<std::int64_t>{value}, Shape{}); }

// Checks that a state entry is a rank-0 tensor of `dtype`.
void check_scalar(const std::string& op, const std::string& name, const Tensor& t, DType dtype) {
  SYNCBN_CHECK(t.defined(), op, ": ", name, " is undefined, expected a rank-0 ", dtype_name(dtype), " tensor");
  SYNCBN_CHECK(t.dtype() == dtype && t.rank() == 0, op, ": ", name, " is ", dtype_name(t.dtype()), " ", t.shape(),
               ", expected a rank-0 ", dtype_name(dtype), " tensor");
}

}  // namespace

Optimizer::Optimizer(std::string name, ParamGroups groups, double default_lr, double default_weight_decay)
    : name_(std::move(name)) {
  SYNCBN_CHECK(default_lr >= 0, name_, ": lr is ", default_lr, ", expected >= 0");
  SYNCBN_CHECK(default_weight_decay >= 0, name_, ": weight_decay is ", default_weight_decay, ", expected >= 0");
  std::map<const nn::Parameter*, std::size_t> seen;  // parameter -> its index, to find repeats
  std::size_t index = 0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    ParamGroup& group = groups[g];
    const double lr = group.lr.value_or(default_lr);
    const double weight_decay = group.weight_decay.value_or(default_weight_decay);
    SYNCBN_CHECK(lr >= 0, name_, ": group ", g, " has lr ", lr, ", expected >= 0");
    SYNCBN_CHECK(weight_decay >= 0, name_, ": group ", g, " has weight_decay ", weight_decay, ", expected >= 0");
    for (nn::Parameter* p : group.params) {
      SYNCBN_CHECK(p != nullptr, name_, ": parameter ", index, " is null, expected a parameter");
      const auto [at, inserted] = seen.emplace(p, index);
      // PyTorch refuses a parameter in two groups too: it would be updated twice per step.
      SYNCBN_CHECK(inserted, name_, ": parameter ", index, " is parameter ", at->second,
                   " again, expected every parameter once");
      ++index;
    }
    groups_.push_back(Group{std::move(group.params), lr, weight_decay});
  }
  states_.resize(index);
}

ParamGroups Optimizer::one_group(std::vector<nn::Parameter*> params) {
  ParamGroups groups(1);
  groups[0].params = std::move(params);
  return groups;
}

void Optimizer::check_before_step() const {
  const std::string op = name_ + "::step";
  const std::vector<std::string> names = buffer_names();
  std::size_t i = 0;
  for (const Group& group : groups_) {
    for (const nn::Parameter* param : group.params) {
      const nn::Parameter& p = *param;
      SYNCBN_CHECK(p.value.defined() && p.grad.defined(), op, ": parameter ", i,
                   " has an undefined value or gradient, expected both");
      SYNCBN_CHECK(p.value.dtype() == DType::Float32 || p.value.dtype() == DType::Float64, op, ": parameter ", i,
                   " has dtype ", dtype_name(p.value.dtype()), ", expected float32 or float64");
      SYNCBN_CHECK(p.grad.shape() == p.value.shape() && p.grad.dtype() == p.value.dtype() &&
                       p.grad.device() == p.value.device(),
                   op, ": the gradient of parameter ", i, " is ", dtype_name(p.grad.dtype()), " ", p.grad.shape(),
                   " on ", p.grad.device(), ", expected ", dtype_name(p.value.dtype()), " ", p.value.shape(), " on ",
                   p.value.device(), " (its value's)");
      const ParamState& state = states_[i];
      for (std::size_t b = 0; b < state.buffers.size(); ++b) {
        const Tensor& buf = state.buffers[b];
        SYNCBN_CHECK(buf.shape() == p.value.shape() && buf.dtype() == p.value.dtype() &&
                         buf.device() == p.value.device(),
                     op, ": parameter ", i, " changed shape, dtype or device since its state was made, expected the ",
                     "one its ", names[b], " has, ", dtype_name(buf.dtype()), " ", buf.shape(), " on ", buf.device());
      }
      ++i;
    }
  }
}

void Optimizer::step() {
  // Every parameter is checked before the first one changes: a step updates
  // all parameters or none.
  check_before_step();
  std::size_t i = 0;
  for (const Group& group : groups_)
    for (nn::Parameter* p : group.params) update(group, *p, states_[i++]);
}

void Optimizer::zero_grad() {
  for (const Group& group : groups_)
    for (nn::Parameter* p : group.params) p->grad.fill_(0.0);
}

double Optimizer::lr() const {
  SYNCBN_CHECK(!groups_.empty(), name_, "::lr: the optimizer has no parameter group, expected at least one");
  for (std::size_t g = 1; g < groups_.size(); ++g)
    SYNCBN_CHECK(groups_[g].lr == groups_[0].lr, name_, "::lr: group ", g, " has lr ", groups_[g].lr,
                 " and group 0 has lr ", groups_[0].lr, ", expected one lr for all groups (read param_groups()[i].lr)");
  return groups_[0].lr;
}

void Optimizer::set_lr(double lr) {
  SYNCBN_CHECK(lr >= 0, name_, "::set_lr: lr is ", lr, ", expected >= 0");
  for (Group& group : groups_) group.lr = lr;
}

void Optimizer::set_lr(std::size_t group, double lr) {
  SYNCBN_CHECK(group < groups_.size(), name_, "::set_lr: group ", group, " does not exist, expected a group below ",
               groups_.size());
  SYNCBN_CHECK(lr >= 0, name_, "::set_lr: lr is ", lr, ", expected >= 0");
  groups_[group].lr = lr;
}

StateDict Optimizer::state_dict() const {
  const std::vector<std::string> names = buffer_names();
  StateDict out;
  for (std::size_t i = 0; i < states_.size(); ++i) {
    const ParamState& state = states_[i];
    if (state.buffers.empty()) continue;  // never stepped: no state, as in PyTorch
    const std::string prefix = "state." + std::to_string(i) + ".";
    if (counts_steps()) out.emplace_back(prefix + "step", scalar_int64(state.step));
    for (std::size_t b = 0; b < names.size(); ++b) out.emplace_back(prefix + names[b], state.buffers[b].clone());
  }
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    const std::string prefix = "param_groups." + std::to_string(g) + ".";
    out.emplace_back(prefix + "lr", scalar_double(groups_[g].lr));
    out.emplace_back(prefix + "weight_decay", scalar_double(groups_[g].weight_decay));
  }
  return out;
}

void Optimizer::load_state_dict(const StateDict& state) {
  const std::string op = name_ + "::load_state_dict";
  const std::vector<std::string> names = buffer_names();
  std::vector<std::string> state_fields = names;
  if (counts_steps()) state_fields.insert(state_fields.begin(), "step");

  // Pass 1: every entry is known, given once and well formed; the new state
  // is built aside (copies onto the parameters' devices).
  std::vector<const nn::Parameter*> params;
  for (const Group& group : groups_) params.insert(params.end(), group.params.begin(), group.params.end());
  std::vector<ParamState> new_states(states_.size());
  std::vector<std::set<std::string>> given(states_.size());  // the fields given per parameter
  std::vector<std::optional<double>> lrs(groups_.size()), weight_decays(groups_.size());
  std::set<std::string> seen;
  for (const auto& [name, tensor] : state) {
    SYNCBN_CHECK(seen.insert(name).second, op, ": ", name, " is given twice, expected every entry once");
    const auto entry = split_entry_name(name);
    if (entry && entry->section == "param_groups") {
      SYNCBN_CHECK(entry->index < groups_.size(), op, ": ", name, " names group ", entry->index,
                   ", expected a group below ", groups_.size());
      SYNCBN_CHECK(entry->field == "lr" || entry->field == "weight_decay", op, ": ", name,
                   " is not an entry of a group, expected param_groups.", entry->index, ".lr or param_groups.",
                   entry->index, ".weight_decay");
      check_scalar(op, name, tensor, DType::Float64);
      const double value = tensor.item();
      SYNCBN_CHECK(value >= 0, op, ": ", name, " is ", value, ", expected >= 0");
      (entry->field == "lr" ? lrs : weight_decays)[entry->index] = value;
    } else if (entry && entry->section == "state") {
      const std::size_t i = entry->index;
      SYNCBN_CHECK(i < params.size(), op, ": ", name, " names parameter ", i, ", expected a parameter below ",
                   params.size());
      const std::string field(entry->field);
      std::size_t b = 0;
      while (b < names.size() && names[b] != field) ++b;
      if (field == "step" && counts_steps()) {
        check_scalar(op, name, tensor, DType::Int64);
        const std::int64_t step = tensor.to_vector<std::int64_t>()[0];
        SYNCBN_CHECK(step >= 0, op, ": ", name, " is ", step, ", expected a step count >= 0");
        new_states[i].step = step;
      } else {
        SYNCBN_CHECK(b < names.size(), op, ": ", name, " is not a state of ", name_,
                     state_fields.empty() ? std::string(" with these options, expected no state entries")
                                          : ", expected state." + std::to_string(i) + ".<" +
                                                name_list(state_fields) + ">");
        const Tensor& value = params[i]->value;
        SYNCBN_CHECK(tensor.defined() && tensor.shape() == value.shape() && tensor.dtype() == value.dtype(), op,
                     ": ", name, " is ", tensor.defined() ? dtype_name(tensor.dtype()) : "undefined", " ",
                     tensor.shape(), ", expected ", dtype_name(value.dtype()), " ", value.shape(),
                     " (parameter ", i, "'s)");
        if (new_states[i].buffers.empty()) new_states[i].buffers.resize(names.size());
        new_states[i].buffers[b] = tensor.to(value.device());  // a copy, also on the same device
      }
      given[i].insert(field);
    } else {
      SYNCBN_THROW(InvalidArgument, op, ": ", name, " is not an entry of an optimizer's state, expected ",
                   "state.<parameter>.<field> or param_groups.<group>.<lr or weight_decay>");
    }
  }
  // Pass 2: completeness. A parameter has all of its state or none.
  for (std::size_t i = 0; i < given.size(); ++i) {
    if (given[i].empty()) continue;
    for (const std::string& field : state_fields)
      SYNCBN_CHECK(given[i].count(field) == 1, op, ": state.", i, ".", field, " is missing, expected ",
                   "every field of parameter ", i, "'s state (", name_list(state_fields), ") or none");
  }
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    SYNCBN_CHECK(lrs[g].has_value(), op, ": param_groups.", g, ".lr is missing, expected the lr of every group");
    SYNCBN_CHECK(weight_decays[g].has_value(), op, ": param_groups.", g,
                 ".weight_decay is missing, expected the weight_decay of every group");
  }
  // Commit (nothing below throws).
  states_ = std::move(new_states);
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    groups_[g].lr = *lrs[g];
    groups_[g].weight_decay = *weight_decays[g];
  }
}

}  // namespace syncbn::optim
