// Element-wise and reduction ops against float64 references, and their
// argument errors. Device-generic.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/core/ops.hpp"

using syncbn::Device;
using syncbn::DType;
using syncbn::InvalidArgument;
using syncbn::Shape;
using syncbn::Tensor;
using syncbn::testing::check_close;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::tolerance_for;

namespace {

struct Inputs {
  Tensor a, b;
  std::vector<double> ra, rb;  // float64 copies of the (rounded) inputs
};

Inputs make_inputs(const Shape& shape, DType dtype) {
  const std::uint64_t seed = syncbn::testing::kSeed;
  Inputs in;
  in.a = Tensor::randn(shape, seed, dtype, test_device());
  in.b = Tensor::randn(shape, seed + 7, dtype, test_device(), 1.0, 3.0);
  in.ra = in.a.to_vector<double>();
  in.rb = in.b.to_vector<double>();
  return in;
}

}  // namespace

TEST_CASE("Element-wise add, sub, mul and scale match a float64 reference", "[tensor][levels]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const std::int64_t n = GENERATE(0, 1, 7, 1000, 4099);
  CAPTURE(dtype, n, syncbn::testing::kSeed);
  const auto in = make_inputs(Shape{n}, dtype);
  std::vector<double> sum(in.ra.size()), diff(in.ra.size()), prod(in.ra.size()), scaled(in.ra.size());
  for (std::size_t i = 0; i < in.ra.size(); ++i) {
    sum[i] = in.ra[i] + in.rb[i];
    diff[i] = in.ra[i] - in.rb[i];
    prod[i] = in.ra[i] * in.rb[i];
    scaled[i] = -2.5 * in.ra[i];
  }
  const auto tol = tolerance_for(dtype);
  check_close(syncbn::core::add(in.a, in.b), sum, tol, "add");
  check_close(syncbn::core::sub(in.a, in.b), diff, tol, "sub");
  check_close(syncbn::core::mul(in.a, in.b), prod, tol, "mul");
  check_close(syncbn::core::scale(in.a, -2.5), scaled, tol, "scale");
}

TEST_CASE("In-place add_, axpby_ and scale_ match a float64 reference", "[tensor][levels]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  CAPTURE(dtype, syncbn::testing::kSeed);
  const auto in = make_inputs(Shape{33, 5}, dtype);
  const auto tol = tolerance_for(dtype);

  Tensor y = in.a.clone();
  syncbn::core::add_(y, in.b, 0.5);
  std::vector<double> want(in.ra.size());
  for (std::size_t i = 0; i < want.size(); ++i) want[i] = in.ra[i] + 0.5 * in.rb[i];
  check_close(y, want, tol, "add_");

  y = in.a.clone();
  syncbn::core::axpby_(y, 2.0, in.b, -3.0);
  for (std::size_t i = 0; i < want.size(); ++i) want[i] = 2.0 * in.rb[i] - 3.0 * in.ra[i];
  check_close(y, want, tol, "axpby_");

  // beta == 0 never reads y, so NaN in y does not leak.
  y = Tensor::full(in.a.shape(), std::nan(""), dtype, test_device());
  syncbn::core::axpby_(y, 1.0, in.b, 0.0);
  check_close(y, in.rb, tol, "axpby_ with beta 0 over NaN");

  y = in.a.clone();
  syncbn::core::scale_(y, 0.25);
  for (std::size_t i = 0; i < want.size(); ++i) want[i] = 0.25 * in.ra[i];
  check_close(y, want, tol, "scale_");
}

TEST_CASE("sum and sum_rows accumulate in float64 and match a float64 reference", "[tensor][levels]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const std::int64_t rows = GENERATE(0, 1, 3, 257, 1000);
  const std::int64_t cols = GENERATE(1, 5, 70);
  CAPTURE(dtype, rows, cols, syncbn::testing::kSeed);
  const auto in = make_inputs(Shape{rows, cols}, dtype);
  double total = 0;
  std::vector<double> column(static_cast<std::size_t>(cols), 0.0);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      total += in.rb[static_cast<std::size_t>(r * cols + c)];
      column[static_cast<std::size_t>(c)] += in.rb[static_cast<std::size_t>(r * cols + c)];
    }
  const auto tol = tolerance_for(dtype);
  const Tensor s = syncbn::core::sum(in.b);
  CHECK(s.rank() == 0);
  check_close(s, {total}, tol, "sum");
  const Tensor cs = syncbn::core::sum_rows(in.b);
  CHECK(cs.shape() == Shape{cols});
  check_close(cs, column, tol, "sum_rows");
}

TEST_CASE("sum_rows keeps the trailing dimensions", "[tensor][levels]") {
  const Tensor x = Tensor::ones(Shape{4, 2, 3}, DType::Float64, test_device());
  const Tensor s = syncbn::core::sum_rows(x);
  CHECK(s.shape() == Shape{2, 3});
  check_close(s, std::vector<double>(6, 4.0), tolerance_for(DType::Float64), "sum_rows of ones");
}

TEST_CASE("Ops reject mismatched shapes, dtypes and devices before writing anything", "[tensor]") {
  const Tensor a = Tensor::ones(Shape{2, 3}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(syncbn::core::add(a, Tensor::ones(Shape{3, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("add: b has shape (3, 2), expected (2, 3) (as a)"));
  CHECK_THROWS_MATCHES(syncbn::core::mul(a, Tensor::ones(Shape{2, 3}, DType::Float64, test_device())), InvalidArgument,
                       MessageIs("mul: b has dtype float64, expected float32 (as a)"));
  const Device other = syncbn::testing::test_on_cuda() ? Device::cpu(0) : Device::cpu(1);
  CHECK_THROWS_MATCHES(syncbn::core::sub(a, Tensor::ones(Shape{2, 3}, DType::Float32, other)), InvalidArgument,
                       MessageIs("sub: b is on " + other.str() + ", expected " + a.device().str() + " (as a)"));
  CHECK_THROWS_MATCHES(syncbn::core::sum(Tensor::ones(Shape{2}, DType::Int64, test_device())), InvalidArgument,
                       MessageIs("sum: a has dtype int64, expected float32 or float64"));
  CHECK_THROWS_MATCHES(syncbn::core::sum_rows(Tensor::ones(Shape{}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("sum_rows: a is a scalar, expected rank >= 1"));

  const Tensor y = Tensor::ones(Shape{2, 3}, DType::Float32, test_device());
  CHECK_THROWS_AS(syncbn::core::add_(y, Tensor::ones(Shape{6}, DType::Float32, test_device())), InvalidArgument);
  check_close(y, std::vector<double>(6, 1.0), tolerance_for(DType::Float32), "y unchanged after a rejected add_");
}

TEST_CASE("matmul_ rejects an output that overlaps an input and leaves it unchanged", "[tensor]") {
  const Device dev = test_device();
  const Tensor a = Tensor::randn(Shape{3, 3}, syncbn::testing::kSeed, DType::Float32, dev);
  const Tensor b = Tensor::randn(Shape{3, 3}, syncbn::testing::kSeed + 1, DType::Float32, dev);
  const auto a_before = a.to_vector<double>();
  CHECK_THROWS_MATCHES(syncbn::core::matmul_(a, a, b, false, false), InvalidArgument,
                       MessageIs("matmul_: c overlaps a in memory, expected an output separate from both inputs"));
  CHECK_THROWS_MATCHES(syncbn::core::matmul_(b, a, b, false, false), InvalidArgument,
                       MessageIs("matmul_: c overlaps b in memory, expected an output separate from both inputs"));
  CHECK(a.to_vector<double>() == a_before);
  // Disjoint views of one buffer are fine.
  const Tensor buffer = Tensor::zeros(Shape{9, 3}, DType::Float32, dev);
  buffer.rows(0, 3).copy_(a);
  buffer.rows(3, 6).copy_(b);
  syncbn::core::matmul_(buffer.rows(6, 9), buffer.rows(0, 3), buffer.rows(3, 6), false, false);
  check_close(buffer.rows(6, 9), syncbn::core::matmul(a, b).to_vector<double>(), {1e-6, 1e-6}, "product");
}

TEST_CASE("In-place and host-access errors name the operation that was called", "[tensor]") {
  const Device dev = test_device();
  const Tensor y = Tensor::zeros(Shape{3}, DType::Float32, dev);
  CHECK_THROWS_MATCHES(syncbn::core::add_(y, Tensor::zeros(Shape{4}, DType::Float32, dev)), InvalidArgument,
                       MessageIs("add_: x has shape (4), expected (3) (as y)"));
  CHECK_THROWS_MATCHES(Tensor().item(), InvalidArgument,
                       MessageIs("Tensor::item: the tensor is undefined, expected a tensor with storage"));
  CHECK_THROWS_MATCHES(Tensor().clone(), InvalidArgument,
                       MessageIs("Tensor::clone: the tensor is undefined, expected a tensor with storage"));
}

namespace {

struct AdamCase {
  const char* name;
  double weight_decay;
  bool decoupled;
  bool amsgrad;
};

}  // namespace

TEST_CASE("adam_update_ matches a float64 reference of PyTorch's Adam and AdamW step", "[tensor][levels]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const std::int64_t n = GENERATE(0, 1, 7, 1000);
  const AdamCase c = GENERATE(AdamCase{"adam", 0.0, false, false}, AdamCase{"adam with L2", 0.1, false, false},
                              AdamCase{"adamw", 0.1, true, false}, AdamCase{"adam amsgrad", 0.1, false, true},
                              AdamCase{"adamw amsgrad", 0.1, true, true});
  const std::int64_t t = GENERATE(1, 7);
  CAPTURE(dtype, n, c.name, t, syncbn::testing::kSeed);
  const Device dev = test_device();
  const std::uint64_t seed = syncbn::testing::kSeed;
  const Tensor p = Tensor::randn(Shape{n}, seed, dtype, dev);
  const Tensor g = Tensor::randn(Shape{n}, seed + 1, dtype, dev);
  const Tensor m = Tensor::randn(Shape{n}, seed + 2, dtype, dev, 0.0, 0.1);
  const Tensor v = Tensor::rand(Shape{n}, seed + 3, dtype, dev, 0.0, 0.5);
  const Tensor vmax = c.amsgrad ? Tensor::rand(Shape{n}, seed + 4, dtype, dev, 0.0, 0.5) : Tensor();
  const auto rp = p.to_vector<double>(), rg = g.to_vector<double>(), rm = m.to_vector<double>(),
             rv = v.to_vector<double>();
  const auto rvmax = c.amsgrad ? vmax.to_vector<double>() : std::vector<double>(rp.size(), 0.0);
  syncbn::core::AdamStep step;
  step.lr = 0.01;
  step.beta1 = 0.8;
  step.beta2 = 0.99;
  step.eps = 1e-6;
  step.weight_decay = c.weight_decay;
  step.decoupled_weight_decay = c.decoupled;
  step.step = t;
  syncbn::core::adam_update_(p, g, m, v, vmax, step);

  // PyTorch 1.13, torch/optim/adam.py and adamw.py (_single_tensor_adam[w]).
  const double bc1 = 1 - std::pow(step.beta1, static_cast<double>(t));
  const double bc2 = 1 - std::pow(step.beta2, static_cast<double>(t));
  std::vector<double> want_p(rp.size()), want_m(rp.size()), want_v(rp.size()), want_vmax(rp.size());
  for (std::size_t i = 0; i < rp.size(); ++i) {
    double param = rp[i];
    double grad = rg[i];
    if (c.decoupled) {
      param *= 1 - step.lr * step.weight_decay;
    } else {
      grad += step.weight_decay * param;
    }
    want_m[i] = rm[i] * step.beta1 + grad * (1 - step.beta1);
    want_v[i] = rv[i] * step.beta2 + grad * grad * (1 - step.beta2);
    double second = want_v[i];
    if (c.amsgrad) second = want_vmax[i] = std::max(rvmax[i], want_v[i]);
    const double denom = std::sqrt(second) / std::sqrt(bc2) + step.eps;
    want_p[i] = param - step.lr / bc1 * want_m[i] / denom;
  }
  const auto tol = tolerance_for(dtype);
  check_close(p, want_p, tol, "param");
  check_close(m, want_m, tol, "exp_avg");
  check_close(v, want_v, tol, "exp_avg_sq");
  if (c.amsgrad) check_close(vmax, want_vmax, tol, "max_exp_avg_sq");
}

TEST_CASE("adam_update_ rejects bad tensors and hyper-parameters before writing anything", "[tensor]") {
  const Device dev = test_device();
  const Tensor p = Tensor::ones(Shape{4}, DType::Float32, dev);
  const Tensor g = Tensor::ones(Shape{4}, DType::Float32, dev);
  const Tensor m = Tensor::zeros(Shape{4}, DType::Float32, dev);
  const Tensor v = Tensor::zeros(Shape{4}, DType::Float32, dev);
  const syncbn::core::AdamStep ok;
  auto bad = [](auto change) {
    syncbn::core::AdamStep s;
    change(s);
    return s;
  };
  CHECK_THROWS_MATCHES(syncbn::core::adam_update_(p, Tensor::ones(Shape{5}, DType::Float32, dev), m, v, Tensor(), ok),
                       InvalidArgument, MessageIs("adam_update_: grad has shape (5), expected (4) (as param)"));
  CHECK_THROWS_MATCHES(syncbn::core::adam_update_(p, g, m, Tensor::zeros(Shape{4}, DType::Float64, dev), Tensor(), ok),
                       InvalidArgument, MessageIs("adam_update_: exp_avg_sq has dtype float64, expected float32 (as param)"));
  CHECK_THROWS_MATCHES(syncbn::core::adam_update_(p, g, m, m, Tensor(), ok), InvalidArgument,
                       MessageIs("adam_update_: exp_avg overlaps exp_avg_sq in memory, expected separate tensors"));
  CHECK_THROWS_MATCHES(syncbn::core::adam_update_(p, g, m, v, Tensor(), bad([](auto& s) { s.step = 0; })),
                       InvalidArgument,
                       MessageIs("adam_update_: step is 0, expected >= 1 (the count including this step)"));
  CHECK_THROWS_MATCHES(syncbn::core::adam_update_(p, g, m, v, Tensor(), bad([](auto& s) { s.beta2 = 1.0; })),
                       InvalidArgument, MessageIs("adam_update_: beta2 is 1, expected 0 <= beta2 < 1"));
  CHECK_THROWS_MATCHES(syncbn::core::adam_update_(p, g, m, v, Tensor(), bad([](auto& s) { s.lr = std::nan(""); })),
                       InvalidArgument, MessageIs("adam_update_: lr is nan, expected >= 0"));
  CHECK(p.to_vector<double>() == std::vector<double>(4, 1.0));
  CHECK(m.to_vector<double>() == std::vector<double>(4, 0.0));
  CHECK(v.to_vector<double>() == std::vector<double>(4, 0.0));
}

TEST_CASE("matmul and matmul_ name themselves and say what they expect", "[ops]") {
  const Tensor a3 = Tensor::zeros(Shape{2, 3, 4}, DType::Float32, test_device());
  const Tensor b = Tensor::zeros(Shape{4, 5}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(syncbn::core::matmul(a3, b), InvalidArgument,
                       MessageIs("matmul: a and b have ranks 3 and 2, expected 2-D matrices"));
  const Tensor c = Tensor::zeros(Shape{2, 5}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(syncbn::core::matmul_(c, a3, b, false, false), InvalidArgument,
                       MessageIs("matmul_: a and b have ranks 3 and 2, expected 2-D matrices"));
  const Tensor a = Tensor::zeros(Shape{2, 3}, DType::Float32, test_device());
  CHECK_THROWS_MATCHES(syncbn::core::matmul(a, b), InvalidArgument,
                       MessageIs("matmul: op(a) is 2 x 3 and op(b) is 4 x 5, expected inner sizes to match"));
}
