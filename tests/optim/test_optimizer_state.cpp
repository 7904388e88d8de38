// Optimizer state as named tensors: its names and contents, a round trip
// into a fresh optimizer that then steps bit-identically, and bad states
// refused with the optimizer unchanged. Device-generic.

#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/optim/adam.hpp"
#include "syncbn/optim/param_groups.hpp"
#include "syncbn/optim/sgd.hpp"

using namespace syncbn;
using syncbn::testing::check_equal;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

// Linear(3, 4) -> BatchNorm1d(4) -> Linear(4, 2) in `dtype`: six parameters
// in two groups (split_weight_decay: 0.weight, 2.weight | the rest).
std::shared_ptr<nn::Sequential> make_model(DType dtype) {
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(3, 4, nn::LinearOptions{true, 1, dtype, test_device()}));
  model->add(std::make_shared<nn::BatchNorm1d>(4, nn::BatchNormOptions{.dtype = dtype, .device = test_device()}));
  model->add(std::make_shared<nn::Linear>(4, 2, nn::LinearOptions{true, 2, dtype, test_device()}));
  return model;
}

enum class Kind { SgdMomentum, SgdNesterov, Adam, AdamAmsgrad, AdamW };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::SgdMomentum: return "SGD with momentum";
    case Kind::SgdNesterov: return "SGD with Nesterov momentum";
    case Kind::Adam: return "Adam";
    case Kind::AdamAmsgrad: return "Adam with amsgrad";
    case Kind::AdamW: return "AdamW";
  }
  return "";
}

std::unique_ptr<optim::Optimizer> make_optimizer(Kind kind, nn::Module& model) {
  optim::ParamGroups groups = optim::split_weight_decay(model, 0.01);
  groups[1].lr = 0.003;  // the groups differ in lr too
  switch (kind) {
    case Kind::SgdMomentum: return std::make_unique<optim::SGD>(groups, optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .dampening = 0.1});
    case Kind::SgdNesterov: return std::make_unique<optim::SGD>(groups, optim::SGDOptions{.lr = 0.05, .momentum = 0.8, .nesterov = true});
    case Kind::Adam: return std::make_unique<optim::Adam>(groups, optim::AdamOptions{.lr = 0.01});
    case Kind::AdamAmsgrad: return std::make_unique<optim::Adam>(groups, optim::AdamOptions{.lr = 0.01, .amsgrad = true});
    case Kind::AdamW: return std::make_unique<optim::AdamW>(groups, optim::AdamWOptions{.lr = 0.01});
  }
  return nullptr;
}

// The same fixed gradients for step `step` on any model of make_model's shape.
void set_gradients(nn::Module& model, int step) {
  std::uint64_t j = 0;
  for (nn::Parameter* p : model.parameters())
    p->grad = Tensor::randn(p->value.shape(), syncbn::testing::kSeed + 37 * static_cast<std::uint64_t>(step) + j++,
                            p->value.dtype(), p->value.device());
}

// Every entry's name and elements on the host, for bit-exact comparisons.
struct HostState {
  std::vector<std::string> names;
  std::vector<std::vector<double>> values;
  bool operator==(const HostState&) const = default;
};

HostState on_host(const optim::StateDict& state) {
  HostState out;
  for (const auto& [name, t] : state) {
    out.names.push_back(name);
    out.values.push_back(t.to_vector<double>());
  }
  return out;
}

Tensor scalar(double v) { return Tensor::from_vector(std::vector<double>{v}, Shape{}); }
Tensor count(std::int64_t v) { return Tensor::from_vector(std::vector<std::int64_t>{v}, Shape{}); }

}  // namespace

TEST_CASE("An optimizer's state loaded into a fresh one makes both step bit-identically", "[optim]") {
  const Kind kind = GENERATE(Kind::SgdMomentum, Kind::SgdNesterov, Kind::Adam, Kind::AdamAmsgrad, Kind::AdamW);
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(kind_name(kind), dtype, syncbn::testing::kSeed);
  auto model = make_model(dtype);
  auto first = make_optimizer(kind, *model);
  for (int step = 0; step < 3; ++step) {
    set_gradients(*model, step);
    first->step();
  }
  first->set_lr(1, 0.002);  // as a schedule would between steps

  // The twin: a copy of the trained parameters and a fresh optimizer, with
  // the first one's state loaded.
  auto twin = make_model(dtype);
  const auto params = model->parameters(), twin_params = twin->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) twin_params[i]->value.copy_(params[i]->value);
  auto second = make_optimizer(kind, *twin);
  second->load_state_dict(first->state_dict());
  CHECK(on_host(second->state_dict()) == on_host(first->state_dict()));
  CHECK(second->param_groups()[1].lr == 0.002);

  for (int step = 3; step < 6; ++step) {
    set_gradients(*model, step);
    set_gradients(*twin, step);
    first->step();
    second->step();
    for (std::size_t i = 0; i < params.size(); ++i)
      check_equal(twin_params[i]->value.to_vector<double>(), params[i]->value.to_vector<double>(),
                  "parameter " + std::to_string(i) + " after step " + std::to_string(step));
  }
}

TEST_CASE("Adam's state names each parameter's moments and step count, and each group's options", "[optim]") {
  auto model = make_model(DType::Float32);
  optim::Adam adam(optim::split_weight_decay(*model, 0.01), optim::AdamOptions{.lr = 0.01, .amsgrad = true});
  // Before the first step there is no parameter state, as in PyTorch.
  std::vector<std::string> names;
  for (const auto& [name, t] : adam.state_dict()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"param_groups.0.lr", "param_groups.0.weight_decay", "param_groups.1.lr",
                                          "param_groups.1.weight_decay"});
  set_gradients(*model, 0);
  adam.step();
  adam.step();
  const optim::StateDict state = adam.state_dict();
  REQUIRE(state.size() == 6 * 4 + 4);
  // Parameters are numbered across the groups: group 0 (0.weight, 2.weight) first.
  const auto params = model->parameters();
  const nn::Parameter* numbered[] = {params[0], params[4], params[1], params[2], params[3], params[5]};
  for (std::size_t i = 0; i < 6; ++i) {
    const std::string prefix = "state." + std::to_string(i) + ".";
    CAPTURE(prefix);
    CHECK(state[4 * i].first == prefix + "step");
    CHECK(state[4 * i].second.dtype() == DType::Int64);
    CHECK(state[4 * i].second.rank() == 0);
    CHECK(state[4 * i].second.to_vector<std::int64_t>() == std::vector<std::int64_t>{2});
    const char* buffers[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    for (std::size_t b = 0; b < 3; ++b) {
      const Tensor& t = state[4 * i + 1 + b].second;
      CHECK(state[4 * i + 1 + b].first == prefix + buffers[b]);
      CHECK(t.shape() == numbered[i]->value.shape());
      CHECK(t.dtype() == DType::Float32);
      CHECK(t.device() == test_device());
    }
  }
  CHECK(state[24].first == "param_groups.0.lr");
  CHECK(state[24].second.dtype() == DType::Float64);
  CHECK(state[24].second.item() == 0.01);
  CHECK(state[25].first == "param_groups.0.weight_decay");
  CHECK(state[25].second.item() == 0.01);
  CHECK(state[27].first == "param_groups.1.weight_decay");
  CHECK(state[27].second.item() == 0.0);

  // The entries are copies: a later step does not change them.
  const HostState before = on_host(state);
  adam.step();
  CHECK(on_host(state) == before);
  CHECK_FALSE(on_host(adam.state_dict()) == before);
}

TEST_CASE("SGD's state is its momentum buffers, and none without momentum", "[optim]") {
  auto model = make_model(DType::Float64);
  optim::SGD plain(model->parameters(), optim::SGDOptions{.lr = 0.1});
  set_gradients(*model, 0);
  plain.step();
  std::vector<std::string> names;
  for (const auto& [name, t] : plain.state_dict()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"param_groups.0.lr", "param_groups.0.weight_decay"});
  // A momentum buffer is not a state of SGD without momentum.
  optim::StateDict with_buffer = plain.state_dict();
  with_buffer.emplace_back("state.0.momentum_buffer", Tensor::zeros(Shape{4, 3}, DType::Float64));
  CHECK_THROWS_MATCHES(plain.load_state_dict(with_buffer), InvalidArgument,
                       MessageIs("SGD::load_state_dict: state.0.momentum_buffer is not a state of SGD with these "
                                 "options, expected no state entries"));

  optim::SGD momentum(model->parameters(), optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
  momentum.step();
  names.clear();
  for (const auto& [name, t] : momentum.state_dict()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"state.0.momentum_buffer", "state.1.momentum_buffer",
                                          "state.2.momentum_buffer", "state.3.momentum_buffer",
                                          "state.4.momentum_buffer", "state.5.momentum_buffer",
                                          "param_groups.0.lr", "param_groups.0.weight_decay"});
}

TEST_CASE("A bad optimizer state is rejected with the optimizer unchanged", "[optim]") {
  const Device dev = test_device();
  auto model = make_model(DType::Float32);
  optim::Adam adam(optim::split_weight_decay(*model, 0.01), optim::AdamOptions{.lr = 0.01});
  set_gradients(*model, 0);
  adam.step();
  const optim::StateDict good = adam.state_dict();  // state.0.{step,exp_avg,exp_avg_sq}, ... state.5, groups
  REQUIRE(good.size() == 6 * 3 + 4);
  const HostState before = on_host(good);

  // good with entry k replaced (or dropped, with an undefined name).
  const auto with = [&](std::size_t k, std::string name, Tensor t) {
    optim::StateDict s = good;
    if (name.empty()) {
      s.erase(s.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
      s[k] = {std::move(name), std::move(t)};
    }
    return s;
  };
  const auto plus = [&](std::string name, Tensor t) {
    optim::StateDict s = good;
    s.emplace_back(std::move(name), std::move(t));
    return s;
  };
  const std::string op = "Adam::load_state_dict: ";
  const Tensor exp_avg0 = good[1].second;  // parameter 0 is 0.weight, (4, 3)
  struct Bad {
    const char* what;
    optim::StateDict state;
    std::string message;
  };
  const Bad bad[] = {
      {"an unknown entry", plus("momentum", scalar(0.9)),
       op + "momentum is not an entry of an optimizer's state, expected state.<parameter>.<field> or "
            "param_groups.<group>.<lr or weight_decay>"},
      {"an unknown field", plus("state.0.momentum_buffer", exp_avg0),
       op + "state.0.momentum_buffer is not a state of Adam, expected state.0.<step, exp_avg or exp_avg_sq>"},
      {"an amsgrad buffer for Adam without amsgrad", plus("state.1.max_exp_avg_sq", exp_avg0),
       op + "state.1.max_exp_avg_sq is not a state of Adam, expected state.1.<step, exp_avg or exp_avg_sq>"},
      {"an index with a leading zero", plus("state.00.step", count(1)),
       op + "state.00.step is not an entry of an optimizer's state, expected state.<parameter>.<field> or "
            "param_groups.<group>.<lr or weight_decay>"},
      {"a parameter that does not exist", plus("state.6.step", count(1)),
       op + "state.6.step names parameter 6, expected a parameter below 6"},
      {"a group that does not exist", plus("param_groups.2.lr", scalar(0.1)),
       op + "param_groups.2.lr names group 2, expected a group below 2"},
      {"an unknown group option", plus("param_groups.0.momentum", scalar(0.1)),
       op + "param_groups.0.momentum is not an entry of a group, expected param_groups.0.lr or "
            "param_groups.0.weight_decay"},
      {"an entry given twice", plus("state.0.exp_avg", exp_avg0), op + "state.0.exp_avg is given twice, expected every entry once"},
      {"a buffer of another shape", with(1, "state.0.exp_avg", Tensor::zeros(Shape{3, 4}, DType::Float32, dev)),
       op + "state.0.exp_avg is float32 (3, 4), expected float32 (4, 3) (parameter 0's)"},
      {"a buffer of another dtype", with(2, "state.0.exp_avg_sq", Tensor::zeros(Shape{4, 3}, DType::Float64, dev)),
       op + "state.0.exp_avg_sq is float64 (4, 3), expected float32 (4, 3) (parameter 0's)"},
      {"an undefined buffer", with(2, "state.0.exp_avg_sq", Tensor()),
       op + "state.0.exp_avg_sq is undefined (), expected float32 (4, 3) (parameter 0's)"},
      {"a float step count", with(0, "state.0.step", scalar(1)),
       op + "state.0.step is float64 (), expected a rank-0 int64 tensor"},
      {"a negative step count", with(0, "state.0.step", count(-3)), op + "state.0.step is -3, expected a step count >= 0"},
      {"a missing moment", with(4, "", Tensor()),
       op + "state.1.exp_avg is missing, expected every field of parameter 1's state (step, exp_avg or "
            "exp_avg_sq) or none"},
      {"a missing lr", with(18, "", Tensor()), op + "param_groups.0.lr is missing, expected the lr of every group"},
      {"a negative lr", with(20, "param_groups.1.lr", scalar(-0.1)), op + "param_groups.1.lr is -0.1, expected >= 0"},
      {"an lr of rank 1", with(20, "param_groups.1.lr", Tensor::from_vector(std::vector<double>{0.1}, Shape{1})),
       op + "param_groups.1.lr is float64 (1), expected a rank-0 float64 tensor"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.what);
    CHECK_THROWS_MATCHES(adam.load_state_dict(b.state), InvalidArgument, MessageIs(b.message));
    CHECK(on_host(adam.state_dict()) == before);
  }

  // A state with no parameter state (a fresh optimizer's) is valid and clears it.
  optim::StateDict groups_only(good.end() - 4, good.end());
  adam.load_state_dict(groups_only);
  CHECK(adam.state_dict().size() == 4);
}
