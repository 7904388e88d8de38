// Adam and AdamW against PyTorch 1.13's update rules written out in float64,
// their parameter groups and their option checks. Device-generic.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/optim/adam.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::tolerance_for;

namespace {

// x as the optimizer stores it: rounded to the parameter's dtype.
double stored(double x, DType dtype) { return dtype == DType::Float32 ? static_cast<double>(static_cast<float>(x)) : x; }

// One parameter's Adam state in float64, stepped as torch/optim/adam.py and
// adamw.py (_single_tensor_adam, _single_tensor_adamw) do for one element,
// each stored value rounded once to the dtype (Note [Adam step]).
struct ReferenceAdam {
  std::vector<double> p, m, v, vmax;
  std::int64_t t = 0;

  explicit ReferenceAdam(std::vector<double> values)
      : p(std::move(values)), m(p.size(), 0.0), v(p.size(), 0.0), vmax(p.size(), 0.0) {}

  void step(const std::vector<double>& grad, double lr, double weight_decay, const optim::AdamOptions& o,
            bool decoupled, DType dtype) {
    ++t;
    const double beta1 = o.betas[0], beta2 = o.betas[1];
    const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(t));
    const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(t));
    const double step_size = lr / bias_correction1;
    for (std::size_t i = 0; i < p.size(); ++i) {
      double g = grad[i];
      double param = p[i];
      if (decoupled) {
        param *= 1 - lr * weight_decay;  // AdamW: param.mul_(1 - lr * weight_decay)
      } else if (weight_decay != 0) {
        g += weight_decay * param;  // Adam: grad = grad.add(param, alpha=weight_decay)
      }
      const double exp_avg = m[i] * beta1 + g * (1 - beta1);
      const double exp_avg_sq = v[i] * beta2 + g * g * (1 - beta2);
      double second = exp_avg_sq;
      if (o.amsgrad) {
        second = std::max(vmax[i], exp_avg_sq);
        vmax[i] = stored(second, dtype);
      }
      const double denom = std::sqrt(second) / std::sqrt(bias_correction2) + o.eps;
      p[i] = stored(param - step_size * exp_avg / denom, dtype);
      m[i] = stored(exp_avg, dtype);
      v[i] = stored(exp_avg_sq, dtype);
    }
  }
};

nn::Parameter make_parameter(const Shape& shape, std::uint64_t seed, DType dtype) {
  const Tensor value = Tensor::randn(shape, seed, dtype, test_device());
  return nn::Parameter{value, Tensor::zeros(shape, dtype, test_device())};
}

// Gradients whose scale falls over the steps, so that amsgrad's maximum of
// the second moment differs from the second moment itself.
Tensor gradient(const Shape& shape, int step, std::size_t param, DType dtype) {
  const double stddev = 2.0 / (1 + step);
  return Tensor::randn(shape, syncbn::testing::kSeed + 100 * static_cast<std::uint64_t>(step) + param, dtype,
                       test_device(), 0.1, stddev);
}

struct Case {
  const char* name;
  bool adamw;
  optim::AdamOptions options;
};

}  // namespace

TEST_CASE("Adam and AdamW follow PyTorch's update rule over several steps", "[optim]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const Case c = GENERATE(Case{"adam defaults", false, {}},
                          Case{"adam with L2 weight decay", false, {0.01, {0.8, 0.99}, 1e-6, 0.1, false}},
                          Case{"adam amsgrad", false, {0.01, {0.9, 0.95}, 1e-8, 0.05, true}},
                          Case{"adamw", true, {0.01, {0.9, 0.999}, 1e-8, 0.1, false}},
                          Case{"adamw amsgrad", true, {0.02, {0.5, 0.9}, 1e-4, 0.3, true}});
  CAPTURE(c.name, dtype, syncbn::testing::kSeed);
  nn::Parameter a = make_parameter(Shape{3, 4}, syncbn::testing::kSeed, dtype);
  nn::Parameter b = make_parameter(Shape{5}, syncbn::testing::kSeed + 1, dtype);
  std::vector<ReferenceAdam> ref{ReferenceAdam(a.value.to_vector<double>()), ReferenceAdam(b.value.to_vector<double>())};
  const optim::AdamOptions& o = c.options;
  std::unique_ptr<optim::Adam> adam;
  if (c.adamw) {
    adam = std::make_unique<optim::AdamW>(std::vector<nn::Parameter*>{&a, &b},
                                          optim::AdamWOptions{o.lr, o.betas, o.eps, o.weight_decay, o.amsgrad});
  } else {
    adam = std::make_unique<optim::Adam>(std::vector<nn::Parameter*>{&a, &b}, o);
  }
  for (int step = 0; step < 6; ++step) {
    nn::Parameter* params[] = {&a, &b};
    for (std::size_t j = 0; j < 2; ++j) {
      params[j]->grad = gradient(params[j]->value.shape(), step, j, dtype);
      ref[j].step(params[j]->grad.to_vector<double>(), o.lr, o.weight_decay, o, c.adamw, dtype);
    }
    adam->step();
    check_close(a.value, ref[0].p, tolerance_for(dtype), "first parameter after step " + std::to_string(step));
    check_close(b.value, ref[1].p, tolerance_for(dtype), "second parameter after step " + std::to_string(step));
  }
}

TEST_CASE("Adam's and AdamW's defaults are PyTorch's", "[optim]") {
  const optim::AdamOptions adam;
  CHECK(adam.lr == 1e-3);
  CHECK(adam.betas == std::array<double, 2>{0.9, 0.999});
  CHECK(adam.eps == 1e-8);
  CHECK(adam.weight_decay == 0.0);
  CHECK_FALSE(adam.amsgrad);
  const optim::AdamWOptions adamw;
  CHECK(adamw.lr == 1e-3);
  CHECK(adamw.betas == std::array<double, 2>{0.9, 0.999});
  CHECK(adamw.eps == 1e-8);
  CHECK(adamw.weight_decay == 1e-2);
  CHECK_FALSE(adamw.amsgrad);
  // A default AdamW decays: with a zero gradient the update is the decay alone.
  nn::Parameter p = make_parameter(Shape{4}, syncbn::testing::kSeed, DType::Float64);
  const auto before = p.value.to_vector<double>();
  optim::AdamW opt({&p});
  opt.step();
  std::vector<double> want(before.size());
  for (std::size_t i = 0; i < want.size(); ++i) want[i] = before[i] * (1 - 1e-3 * 1e-2);
  check_close(p.value, want, tolerance_for(DType::Float64), "decay of a default AdamW");
}

TEST_CASE("Adam applies each parameter group's lr and weight decay", "[optim]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const bool adamw = GENERATE(false, true);
  CAPTURE(dtype, adamw, syncbn::testing::kSeed);
  nn::Parameter a = make_parameter(Shape{6}, syncbn::testing::kSeed, dtype);
  nn::Parameter b = make_parameter(Shape{2, 3}, syncbn::testing::kSeed + 1, dtype);
  nn::Parameter c = make_parameter(Shape{4}, syncbn::testing::kSeed + 2, dtype);
  // Group 0 takes the defaults; group 1 its own lr; group 2 its own lr and weight decay.
  optim::ParamGroups groups{{{&a}}, {{&b}, 0.05}, {{&c}, 0.002, 0.0}};
  const optim::AdamOptions o{0.01, {0.9, 0.99}, 1e-8, 0.2, true};
  std::unique_ptr<optim::Adam> opt;
  if (adamw) {
    opt = std::make_unique<optim::AdamW>(groups, optim::AdamWOptions{o.lr, o.betas, o.eps, o.weight_decay, o.amsgrad});
  } else {
    opt = std::make_unique<optim::Adam>(groups, o);
  }
  REQUIRE(opt->param_groups().size() == 3);
  CHECK(opt->param_groups()[0].lr == 0.01);
  CHECK(opt->param_groups()[0].weight_decay == 0.2);
  CHECK(opt->param_groups()[1].lr == 0.05);
  CHECK(opt->param_groups()[1].weight_decay == 0.2);
  CHECK(opt->param_groups()[2].lr == 0.002);
  CHECK(opt->param_groups()[2].weight_decay == 0.0);

  nn::Parameter* params[] = {&a, &b, &c};
  std::vector<ReferenceAdam> ref;
  for (nn::Parameter* p : params) ref.emplace_back(p->value.to_vector<double>());
  for (int step = 0; step < 4; ++step) {
    if (step == 2) opt->set_lr(1, 0.03);  // a schedule's change between steps
    for (std::size_t j = 0; j < 3; ++j) {
      params[j]->grad = gradient(params[j]->value.shape(), step, j, dtype);
      const auto& group = opt->param_groups()[j];
      ref[j].step(params[j]->grad.to_vector<double>(), group.lr, group.weight_decay, o, adamw, dtype);
    }
    opt->step();
    for (std::size_t j = 0; j < 3; ++j)
      check_close(params[j]->value, ref[j].p, tolerance_for(dtype),
                  "parameter " + std::to_string(j) + " after step " + std::to_string(step));
  }
}

TEST_CASE("Adam and AdamW reject invalid options as PyTorch does", "[optim]") {
  nn::Parameter p = make_parameter(Shape{2}, syncbn::testing::kSeed, DType::Float32);
  const std::vector<nn::Parameter*> params{&p};
  CHECK_THROWS_MATCHES(optim::Adam(params, {.lr = -1e-3}), InvalidArgument,
                       MessageIs("Adam: lr is -0.001, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::Adam(params, {.eps = -1.0}), InvalidArgument,
                       MessageIs("Adam: eps is -1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::Adam(params, {.betas = {1.0, 0.999}}), InvalidArgument,
                       MessageIs("Adam: betas[0] is 1, expected 0 <= betas[0] < 1"));
  CHECK_THROWS_MATCHES(optim::Adam(params, {.betas = {0.9, -0.5}}), InvalidArgument,
                       MessageIs("Adam: betas[1] is -0.5, expected 0 <= betas[1] < 1"));
  CHECK_THROWS_MATCHES(optim::Adam(params, {.betas = {std::nan(""), 0.999}}), InvalidArgument,
                       MessageIs("Adam: betas[0] is nan, expected 0 <= betas[0] < 1"));
  CHECK_THROWS_MATCHES(optim::Adam(params, {.weight_decay = -0.1}), InvalidArgument,
                       MessageIs("Adam: weight_decay is -0.1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::AdamW(params, {.weight_decay = -0.1}), InvalidArgument,
                       MessageIs("AdamW: weight_decay is -0.1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::AdamW(params, {.eps = -1.0}), InvalidArgument,
                       MessageIs("AdamW: eps is -1, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::Adam(optim::ParamGroups{{params}, {{}, -0.5}}), InvalidArgument,
                       MessageIs("Adam: group 1 has lr -0.5, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::AdamW(optim::ParamGroups{{params, std::nullopt, -2.0}}), InvalidArgument,
                       MessageIs("AdamW: group 0 has weight_decay -2, expected >= 0"));
  CHECK_THROWS_MATCHES(optim::Adam({&p, nullptr}), InvalidArgument,
                       MessageIs("Adam: parameter 1 is null, expected a parameter"));
  CHECK_THROWS_MATCHES(optim::Adam(optim::ParamGroups{{params}, {params}}), InvalidArgument,
                       MessageIs("Adam: parameter 1 is parameter 0 again, expected every parameter once"));
  // Zero is valid for each, as in PyTorch.
  CHECK_NOTHROW(optim::Adam(params, {.lr = 0, .betas = {0, 0}, .eps = 0, .weight_decay = 0}));
}

TEST_CASE("Adam checks every parameter before updating any", "[optim]") {
  const Device dev = test_device();
  nn::Parameter a{Tensor::ones(Shape{3}, DType::Float32, dev), Tensor::ones(Shape{3}, DType::Float32, dev)};
  nn::Parameter b{Tensor::ones(Shape{2}, DType::Float32, dev), Tensor::ones(Shape{2}, DType::Float32, dev)};
  optim::Adam adam({&a, &b}, {.lr = 0.5});
  b.grad = Tensor::ones(Shape{2}, DType::Float64, dev);  // a bad gradient on the second parameter
  CHECK_THROWS_MATCHES(adam.step(), InvalidArgument,
                       MessageIs("Adam::step: the gradient of parameter 1 is float64 (2) on " + dev.str() +
                                 ", expected float32 (2) on " + dev.str() + " (its value's)"));
  CHECK(a.value.to_vector<double>() == std::vector<double>{1, 1, 1});  // untouched
  CHECK(adam.state_dict().size() == 2);  // no parameter state yet: only the group's lr and weight_decay
  b.grad = Tensor::ones(Shape{2}, DType::Float32, dev);
  adam.step();
  // The first step of Adam moves each element by lr (m / sqrt(v) = 1 after bias correction), up to eps.
  check_close(a.value, {0.5, 0.5, 0.5}, {1e-6, 1e-6}, "after the first real step");
  // A parameter whose shape changed after its state was made is refused too.
  a.value = Tensor::ones(Shape{4}, DType::Float32, dev);
  a.grad = Tensor::ones(Shape{4}, DType::Float32, dev);
  CHECK_THROWS_MATCHES(adam.step(), InvalidArgument,
                       MessageIs("Adam::step: parameter 0 changed shape, dtype or device since its state was made, "
                                 "expected the one its exp_avg has, float32 (3) on " + dev.str()));
  CHECK(b.value.to_vector<double>() == std::vector<double>{0.5, 0.5});
}
