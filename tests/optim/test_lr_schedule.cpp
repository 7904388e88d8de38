// Learning-rate schedules against PyTorch's closed forms, per group, their
// argument checks and their state. Device-generic (the optimizer's
// parameters live on the device under test).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "syncbn/error.hpp"
#include "syncbn/optim/lr_schedule.hpp"
#include "syncbn/optim/sgd.hpp"

using namespace syncbn;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

// Two parameter groups with base lrs 0.1 and 0.02 (the second its own).
struct TwoGroups {
  nn::Parameter a{Tensor::ones(Shape{2}, DType::Float32, test_device()), Tensor::zeros(Shape{2}, DType::Float32, test_device())};
  nn::Parameter b{Tensor::ones(Shape{3}, DType::Float32, test_device()), Tensor::zeros(Shape{3}, DType::Float32, test_device())};
  optim::SGD sgd{optim::ParamGroups{{{&a}}, {{&b}, 0.02}}, optim::SGDOptions{.lr = 0.1, .momentum = 0.9}};
};

constexpr double kBase[] = {0.1, 0.02};

// Checks the schedule through `epochs` steps against want(epoch, base_lr):
// last_epoch, get_last_lr and the optimizer's groups.
void check_sequence(optim::LRSchedule& schedule, const optim::Optimizer& opt, int epochs,
                    const std::function<double(std::int64_t, double)>& want) {
  for (std::int64_t epoch = 0; epoch <= epochs; ++epoch) {
    if (epoch > 0) schedule.step();
    CAPTURE(epoch);
    REQUIRE(schedule.last_epoch() == epoch);
    REQUIRE(schedule.get_last_lr().size() == 2);
    for (std::size_t g = 0; g < 2; ++g) {
      CAPTURE(g);
      const double w = want(epoch, kBase[g]);
      // Written independently of the library's formula: tolerate its rounding.
      CHECK_THAT(schedule.get_last_lr()[g],
                 Catch::Matchers::WithinRel(w, 1e-12) || Catch::Matchers::WithinAbs(w, 1e-15));
      CHECK(opt.param_groups()[g].lr == schedule.get_last_lr()[g]);
    }
  }
}

}  // namespace

TEST_CASE("StepLR decays every group's lr by gamma every step_size epochs", "[optim]") {
  TwoGroups m;
  optim::StepLR schedule(m.sgd, 3, 0.5);
  CHECK(schedule.base_lrs() == std::vector<double>{0.1, 0.02});
  check_sequence(schedule, m.sgd, 10, [](std::int64_t epoch, double base) {
    const double decays[] = {0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3};  // floor(epoch / 3)
    return base * std::pow(0.5, decays[epoch]);
  });
}

TEST_CASE("MultiStepLR decays at each milestone, in any order, twice for a repeated one", "[optim]") {
  TwoGroups m;
  optim::MultiStepLR schedule(m.sgd, {5, 2, 5}, 0.1);
  check_sequence(schedule, m.sgd, 8, [](std::int64_t epoch, double base) {
    return epoch < 2 ? base : epoch < 5 ? base * 0.1 : base * 0.001;
  });
}

TEST_CASE("CosineAnnealingLR follows the closed form, past T_max too", "[optim]") {
  TwoGroups m;
  const double eta_min = 0.001;
  optim::CosineAnnealingLR schedule(m.sgd, 10, eta_min);
  check_sequence(schedule, m.sgd, 25, [&](std::int64_t epoch, double base) {
    return eta_min + (base - eta_min) * (1 + std::cos(std::numbers::pi * static_cast<double>(epoch) / 10.0)) / 2;
  });
  // At T_max it reaches eta_min.
  optim::CosineAnnealingLR fresh(m.sgd, 4);
  for (int i = 0; i < 4; ++i) fresh.step();
  CHECK_THAT(fresh.get_last_lr()[0], Catch::Matchers::WithinAbs(0.0, 1e-17));
}

TEST_CASE("LinearWarmup ramps from start_factor times the base lr, then hands over to the inner schedule", "[optim]") {
  TwoGroups m;
  const double start = 0.1;
  const std::int64_t warmup = 4;
  optim::LinearWarmup schedule(std::make_unique<optim::CosineAnnealingLR>(m.sgd, 10), warmup, start);
  CHECK(schedule.base_lrs() == std::vector<double>{0.1, 0.02});
  check_sequence(schedule, m.sgd, 20, [&](std::int64_t epoch, double base) {
    if (epoch < warmup) return base * (start + (1 - start) * static_cast<double>(epoch) / 4.0);
    return base * (1 + std::cos(std::numbers::pi * static_cast<double>(epoch - warmup) / 10.0)) / 2;
  });
}

TEST_CASE("LinearWarmup in front of StepLR, stepped per iteration", "[optim]") {
  TwoGroups m;
  optim::LinearWarmup schedule(std::make_unique<optim::StepLR>(m.sgd, 5, 0.5), 3);  // start_factor 1/3
  check_sequence(schedule, m.sgd, 14, [](std::int64_t iteration, double base) {
    if (iteration < 3) return base * (1.0 / 3.0 + (2.0 / 3.0) * static_cast<double>(iteration) / 3.0);
    return base * std::pow(0.5, static_cast<double>((iteration - 3) / 5));
  });
}

TEST_CASE("Schedules reject bad arguments and leave the lrs unchanged", "[optim]") {
  TwoGroups m;
  CHECK_THROWS_MATCHES(optim::StepLR(m.sgd, 0), InvalidArgument, MessageIs("StepLR: step_size is 0, expected >= 1"));
  CHECK_THROWS_MATCHES(optim::StepLR(m.sgd, 2, -0.5), InvalidArgument,
                       MessageIs("StepLR: gamma is -0.5, expected a finite gamma >= 0"));
  CHECK_THROWS_MATCHES(optim::StepLR(m.sgd, 2, INFINITY), InvalidArgument,
                       MessageIs("StepLR: gamma is inf, expected a finite gamma >= 0"));
  CHECK_THROWS_MATCHES(optim::MultiStepLR(m.sgd, {3, -1}), InvalidArgument,
                       MessageIs("MultiStepLR: milestone 1 is -1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::MultiStepLR(m.sgd, {3}, std::nan("")), InvalidArgument,
                       MessageIs("MultiStepLR: gamma is nan, expected a finite gamma >= 0"));
  CHECK_THROWS_MATCHES(optim::CosineAnnealingLR(m.sgd, 0), InvalidArgument,
                       MessageIs("CosineAnnealingLR: T_max is 0, expected >= 1"));
  CHECK_THROWS_MATCHES(optim::CosineAnnealingLR(m.sgd, 5, -0.1), InvalidArgument,
                       MessageIs("CosineAnnealingLR: eta_min is -0.1, expected a finite eta_min >= 0"));
  CHECK_THROWS_MATCHES(optim::LinearWarmup(nullptr, 3), InvalidArgument,
                       MessageIs("LinearWarmup: the inner schedule is null, expected a schedule"));
  CHECK_THROWS_MATCHES(optim::LinearWarmup(std::make_unique<optim::StepLR>(m.sgd, 2), 0), InvalidArgument,
                       MessageIs("LinearWarmup: warmup_steps is 0, expected >= 1"));
  CHECK_THROWS_MATCHES(optim::LinearWarmup(std::make_unique<optim::StepLR>(m.sgd, 2), 3, 1.5), InvalidArgument,
                       MessageIs("LinearWarmup: start_factor is 1.5, expected 0 <= start_factor <= 1"));
  CHECK(m.sgd.param_groups()[0].lr == 0.1);
  CHECK(m.sgd.param_groups()[1].lr == 0.02);
}

TEST_CASE("A schedule's state restores its epoch and base lrs in a fresh schedule", "[optim]") {
  TwoGroups m;
  optim::LinearWarmup schedule(std::make_unique<optim::CosineAnnealingLR>(m.sgd, 10), 2, 0.5);
  for (int i = 0; i < 5; ++i) schedule.step();
  const optim::StateDict state = schedule.state_dict();
  REQUIRE(state.size() == 3);
  CHECK(state[0].first == "last_epoch");
  CHECK(state[0].second.dtype() == DType::Int64);
  CHECK(state[0].second.rank() == 0);
  CHECK(state[0].second.to_vector<std::int64_t>() == std::vector<std::int64_t>{5});
  CHECK(state[1].first == "base_lrs.0");
  CHECK(state[1].second.dtype() == DType::Float64);
  CHECK(state[1].second.item() == 0.1);
  CHECK(state[2].first == "base_lrs.1");
  CHECK(state[2].second.item() == 0.02);

  TwoGroups other;
  optim::LinearWarmup resumed(std::make_unique<optim::CosineAnnealingLR>(other.sgd, 10), 2, 0.5);
  resumed.load_state_dict(state);
  CHECK(resumed.last_epoch() == 5);
  CHECK(resumed.get_last_lr() == schedule.get_last_lr());
  CHECK(other.sgd.param_groups()[0].lr == m.sgd.param_groups()[0].lr);  // the lrs of epoch 5
  CHECK(other.sgd.param_groups()[1].lr == m.sgd.param_groups()[1].lr);
  for (int i = 0; i < 4; ++i) {
    schedule.step();
    resumed.step();
    CHECK(resumed.get_last_lr() == schedule.get_last_lr());
  }
}

TEST_CASE("A bad schedule state is rejected with the schedule unchanged", "[optim]") {
  TwoGroups m;
  optim::StepLR schedule(m.sgd, 2, 0.5);
  schedule.step();
  schedule.step();
  const optim::StateDict good = schedule.state_dict();
  const auto scalar = [](double v) { return Tensor::from_vector(std::vector<double>{v}, Shape{}); };
  const auto count = [](std::int64_t v) { return Tensor::from_vector(std::vector<std::int64_t>{v}, Shape{}); };
  struct Bad {
    const char* what;
    optim::StateDict state;
    std::string message;
  };
  const Bad bad[] = {
      {"an unknown entry", {good[0], good[1], good[2], {"gamma", scalar(0.5)}},
       "StepLR::load_state_dict: gamma is not an entry of a schedule's state, expected last_epoch or base_lrs.<group>"},
      {"a missing base lr", {good[0], good[1]},
       "StepLR::load_state_dict: base_lrs.1 is missing, expected the base lr of every group"},
      {"a missing epoch", {good[1], good[2]}, "StepLR::load_state_dict: last_epoch is missing, expected it"},
      {"a group that does not exist", {good[0], good[1], good[2], {"base_lrs.2", scalar(0.1)}},
       "StepLR::load_state_dict: base_lrs.2 names group 2, expected a group below 2"},
      {"an entry given twice", {good[0], good[1], good[2], good[1]},
       "StepLR::load_state_dict: base_lrs.0 is given twice, expected every entry once"},
      {"a float epoch", {{"last_epoch", scalar(2)}, good[1], good[2]},
       "StepLR::load_state_dict: last_epoch is float64 (), expected a rank-0 int64 tensor"},
      {"a negative epoch", {{"last_epoch", count(-1)}, good[1], good[2]},
       "StepLR::load_state_dict: last_epoch is -1, expected >= 0"},
      {"a negative base lr", {good[0], good[1], {"base_lrs.1", scalar(-0.5)}},
       "StepLR::load_state_dict: base_lrs.1 is -0.5, expected >= 0"},
      {"a base lr of rank 1", {good[0], good[1], {"base_lrs.1", Tensor::from_vector(std::vector<double>{0.1}, Shape{1})}},
       "StepLR::load_state_dict: base_lrs.1 is float64 (1), expected a rank-0 float64 tensor"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.what);
    CHECK_THROWS_MATCHES(schedule.load_state_dict(b.state), InvalidArgument, MessageIs(b.message));
    CHECK(schedule.last_epoch() == 2);
    CHECK(schedule.base_lrs() == std::vector<double>{0.1, 0.02});
    CHECK(m.sgd.param_groups()[0].lr == 0.05);
  }
}
