// Element-wise and reduction operations: one validation gate, then the
// backend table of the tensors' device kind.

#include "syncbn/core/ops.hpp"

#include <cmath>
#include <utility>
#include <vector>

#include "backend/kernels.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core {
namespace {

void check_math_operand(const Tensor& t, const char* op, const char* name) {
  SYNCBN_CHECK(t.defined(), op, ": ", name, " is undefined, expected a tensor");
  SYNCBN_CHECK(t.dtype() == DType::Float32 || t.dtype() == DType::Float64, op, ": ", name, " has dtype ",
               dtype_name(t.dtype()), ", expected float32 or float64");
}

// b must match a in shape, dtype and device.
void check_same(const Tensor& a, const Tensor& b, const char* op, const char* a_name, const char* b_name) {
  check_math_operand(a, op, a_name);
  check_math_operand(b, op, b_name);
  SYNCBN_CHECK(b.device() == a.device(), op, ": ", b_name, " is on ", b.device(), ", expected ", a.device(), " (as ",
               a_name, ")");
  SYNCBN_CHECK(b.dtype() == a.dtype(), op, ": ", b_name, " has dtype ", dtype_name(b.dtype()), ", expected ",
               dtype_name(a.dtype()), " (as ", a_name, ")");
  SYNCBN_CHECK(b.shape() == a.shape(), op, ": ", b_name, " has shape ", b.shape(), ", expected ", a.shape(), " (as ",
               a_name, ")");
}

// True when the two tensors' elements overlap in memory.
bool overlap(const Tensor& x, const Tensor& y) {
  if (!x.shares_storage_with(y) || x.numel() == 0 || y.numel() == 0) return false;
  return x.storage_offset() < y.storage_offset() + y.numel() && y.storage_offset() < x.storage_offset() + x.numel();
}

Tensor binary(const Tensor& a, const Tensor& b, detail::BinaryOp op, const char* name) {
  check_same(a, b, name, "a", "b");
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  detail::elementwise_kernels(a.device().kind())
      .binary(a.device(), op, a.dtype(), a.numel(), a.raw_data(), b.raw_data(), out.raw_data());
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(a, b, detail::BinaryOp::Add, "add"); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(a, b, detail::BinaryOp::Sub, "sub"); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(a, b, detail::BinaryOp::Mul, "mul"); }

Tensor scale(const Tensor& a, double alpha) {
  check_math_operand(a, "scale", "a");
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  detail::elementwise_kernels(a.device().kind())
      .axpby(a.device(), a.dtype(), a.numel(), alpha, a.raw_data(), 0.0, out.raw_data());
  return out;
}

namespace {

void axpby_checked(const Tensor& y, double alpha, const Tensor& x, double beta, const char* op) {
  check_same(y, x, op, "y", "x");
  detail::elementwise_kernels(y.device().kind())
      .axpby(y.device(), y.dtype(), y.numel(), alpha, x.raw_data(), beta, y.raw_data());
}

}  // namespace

void add_(const Tensor& y, const Tensor& x, double alpha) { axpby_checked(y, alpha, x, 1.0, "add_"); }

void axpby_(const Tensor& y, double alpha, const Tensor& x, double beta) { axpby_checked(y, alpha, x, beta, "axpby_"); }

void scale_(const Tensor& x, double alpha) {
  check_math_operand(x, "scale_", "x");
  detail::elementwise_kernels(x.device().kind()).scale(x.device(), x.dtype(), x.numel(), alpha, x.raw_data());
}

// Note [Adam step]
// adam_update_ is one fused kernel per tensor rather than a chain of ops:
// PyTorch's update reads and writes param, exp_avg and exp_avg_sq several
// times (mul_, add_, addcmul_, sqrt, div, add_, addcdiv_), a fused pass once.
// Each element is computed in float64 from the stored values and each
// result is rounded once to the dtype, so a float32 parameter differs from
// PyTorch's float32 arithmetic (a rounding per op) by about an ulp, and the
// float64 reference of the tests is the exact specification. The step's
// constants (bias corrections, step size) are computed here on the host, in
// float64 as PyTorch does in Python.
void adam_update_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                  const Tensor& max_exp_avg_sq, const AdamStep& step) {
  constexpr const char* op = "adam_update_";
  check_same(param, grad, op, "param", "grad");
  check_same(param, exp_avg, op, "param", "exp_avg");
  check_same(param, exp_avg_sq, op, "param", "exp_avg_sq");
  const bool amsgrad = max_exp_avg_sq.defined();
  if (amsgrad) check_same(param, max_exp_avg_sq, op, "param", "max_exp_avg_sq");
  const std::pair<const Tensor*, const char*> written[] = {
      {&param, "param"}, {&exp_avg, "exp_avg"}, {&exp_avg_sq, "exp_avg_sq"}, {&max_exp_avg_sq, "max_exp_avg_sq"}};
  const std::size_t count = amsgrad ? 4 : 3;
  for (std::size_t i = 0; i < count; ++i)
    for (std::size_t j = i + 1; j < count; ++j)
      SYNCBN_CHECK(!overlap(*written[i].first, *written[j].first), op, ": ", written[i].second, " overlaps ",
                   written[j].second, " in memory, expected separate tensors");
  SYNCBN_CHECK(step.lr >= 0, op, ": lr is ", step.lr, ", expected >= 0");
  SYNCBN_CHECK(step.eps >= 0, op, ": eps is ", step.eps, ", expected >= 0");
  SYNCBN_CHECK(step.beta1 >= 0 && step.beta1 < 1, op, ": beta1 is ", step.beta1, ", expected 0 <= beta1 < 1");
  SYNCBN_CHECK(step.beta2 >= 0 && step.beta2 < 1, op, ": beta2 is ", step.beta2, ", expected 0 <= beta2 < 1");
  SYNCBN_CHECK(step.weight_decay >= 0, op, ": weight_decay is ", step.weight_decay, ", expected >= 0");
  SYNCBN_CHECK(step.step >= 1, op, ": step is ", step.step, ", expected >= 1 (the count including this step)");

  const double t = static_cast<double>(step.step);
  detail::AdamCoefficients c{};
  c.grad_decay = step.decoupled_weight_decay ? 0.0 : step.weight_decay;
  c.param_scale = step.decoupled_weight_decay ? 1.0 - step.lr * step.weight_decay : 1.0;
  c.beta1 = step.beta1;
  c.beta2 = step.beta2;
  c.step_size = step.lr / (1.0 - std::pow(step.beta1, t));
  c.bias_correction2_sqrt = std::sqrt(1.0 - std::pow(step.beta2, t));
  c.eps = step.eps;
  detail::elementwise_kernels(param.device().kind())
      .adam(param.device(), param.dtype(), param.numel(), c, param.raw_data(), grad.raw_data(), exp_avg.raw_data(),
            exp_avg_sq.raw_data(), amsgrad ? max_exp_avg_sq.raw_data() : nullptr);
}

Tensor sum(const Tensor& a) {
  check_math_operand(a, "sum", "a");
  Tensor out = Tensor::empty(Shape{}, a.dtype(), a.device());
  detail::reduce_kernels(a.device().kind()).sum_all(a.device(), a.dtype(), a.numel(), a.raw_data(), out.raw_data());
  return out;
}

Tensor sum_rows(const Tensor& a) {
  check_math_operand(a, "sum_rows", "a");
  SYNCBN_CHECK(a.rank() >= 1, "sum_rows: a is a scalar, expected rank >= 1");
  const std::vector<std::int64_t> dims = a.shape().dims();
  Tensor out = Tensor::empty(Shape(std::vector<std::int64_t>(dims.begin() + 1, dims.end())), a.dtype(), a.device());
  const std::int64_t rows = a.size(0);
  const std::int64_t cols = out.numel();
  if (rows == 0) {
    out.fill_(0.0);
    return out;
  }
  detail::reduce_kernels(a.device().kind()).sum_rows(a.device(), a.dtype(), rows, cols, a.raw_data(), out.raw_data());
  return out;
}

void matmul_(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha,
             double beta) {
  check_math_operand(a, "matmul_", "a");
  check_math_operand(b, "matmul_", "b");
  check_math_operand(c, "matmul_", "c");
  SYNCBN_CHECK(a.rank() == 2 && b.rank() == 2, "matmul_: a and b have ranks ", a.rank(), " and ", b.rank(),
               ", expected 2-D matrices");
  SYNCBN_CHECK(b.device() == a.device() && c.device() == a.device(), "matmul_: operands are on ", a.device(), ", ",
               b.device(), " and ", c.device(), ", expected one device");
  SYNCBN_CHECK(b.dtype() == a.dtype() && c.dtype() == a.dtype(), "matmul_: operands have dtypes ",
               dtype_name(a.dtype()), ", ", dtype_name(b.dtype()), " and ", dtype_name(c.dtype()),
               ", expected one dtype");
  const std::int64_t m = trans_a ? a.size(1) : a.size(0);
  const std::int64_t k = trans_a ? a.size(0) : a.size(1);
  const std::int64_t kb = trans_b ? b.size(1) : b.size(0);
  const std::int64_t n = trans_b ? b.size(0) : b.size(1);
  SYNCBN_CHECK(k == kb, "matmul_: op(a) is ", m, " x ", k, " and op(b) is ", kb, " x ", n, ", expected inner sizes to match");
  SYNCBN_CHECK(c.shape() == Shape({m, n}), "matmul_: c has shape ", c.shape(), ", expected ", Shape({m, n}));
  // The product reads a and b while it writes c: an output that overlaps an
  // input would be read after it was overwritten.
  SYNCBN_CHECK(!overlap(c, a) && !overlap(c, b), "matmul_: c overlaps ", overlap(c, a) ? "a" : "b",
               " in memory, expected an output separate from both inputs");
  detail::blas_kernels(a.device().kind())
      .gemm(a.device(), a.dtype(), trans_a, trans_b, m, n, k, alpha, a.raw_data(), b.raw_data(), beta, c.raw_data());
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_math_operand(a, "matmul", "a");
  check_math_operand(b, "matmul", "b");
  SYNCBN_CHECK(a.rank() == 2 && b.rank() == 2, "matmul: a and b have ranks ", a.rank(), " and ", b.rank(),
               ", expected 2-D matrices");
  SYNCBN_CHECK((trans_a ? a.size(0) : a.size(1)) == (trans_b ? b.size(1) : b.size(0)), "matmul: op(a) is ",
               trans_a ? a.size(1) : a.size(0), " x ", trans_a ? a.size(0) : a.size(1), " and op(b) is ",
               trans_b ? b.size(1) : b.size(0), " x ", trans_b ? b.size(0) : b.size(1), ", expected inner sizes to match");
  SYNCBN_CHECK(b.device() == a.device() && b.dtype() == a.dtype(), "matmul: b is ", dtype_name(b.dtype()), " on ",
               b.device(), ", expected ", dtype_name(a.dtype()), " on ", a.device(), " (as a)");
  const std::int64_t m = trans_a ? a.size(1) : a.size(0);
  const std::int64_t n = trans_b ? b.size(0) : b.size(1);
  Tensor c = Tensor::empty(Shape{m, n}, a.dtype(), a.device());
  matmul_(c, a, b, trans_a, trans_b, 1.0, 0.0);
  return c;
}

Tensor sum_tensors(std::span<const Tensor* const> sources, Device device) {
  SYNCBN_CHECK(!sources.empty() && sources.size() <= static_cast<std::size_t>(kMaxReplicas), "sum_tensors: ",
               sources.size(), " sources, expected 1 to ", kMaxReplicas);
  device.check_available();
  const Tensor& first = *sources.front();
  check_math_operand(first, "sum_tensors", "source 0");
  std::vector<const void*> pointers(sources.size());
  for (std::size_t k = 0; k < sources.size(); ++k) {
    const Tensor& t = *sources[k];
    SYNCBN_CHECK(t.defined(), "sum_tensors: source ", k, " is undefined, expected a tensor");
    SYNCBN_CHECK(t.dtype() == first.dtype() && t.shape() == first.shape(), "sum_tensors: source ", k, " is ",
                 dtype_name(t.dtype()), " ", t.shape(), ", expected ", dtype_name(first.dtype()), " ", first.shape(),
                 " (as source 0)");
    SYNCBN_CHECK(t.device().shares_memory_with(device), "sum_tensors: source ", k, " is on ", t.device(),
                 ", expected memory that ", device, " shares");
    pointers[k] = t.raw_data();
  }
  Tensor out = Tensor::empty(first.shape(), first.dtype(), device);
  detail::reduce_kernels(device.kind())
      .sum_many(device, first.dtype(), first.numel(), pointers.data(), static_cast<int>(pointers.size()),
                out.raw_data());
  return out;
}

Tensor relu(const Tensor& x) {
  check_math_operand(x, "relu", "x");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  detail::activation_kernels(x.device().kind()).relu_forward(x.device(), x.dtype(), x.numel(), x.raw_data(), y.raw_data());
  return y;
}

Tensor relu_backward(const Tensor& grad_output, const Tensor& output) {
  check_same(output, grad_output, "relu_backward", "output", "grad_output");
  Tensor dx = Tensor::empty(output.shape(), output.dtype(), output.device());
  detail::activation_kernels(output.device().kind())
      .relu_backward(output.device(), output.dtype(), output.numel(), grad_output.raw_data(), output.raw_data(),
                     dx.raw_data());
  return dx;
}

namespace {

// Returns (N, C) after checking logits and targets.
std::pair<std::int64_t, std::int64_t> check_cross_entropy(const Tensor& logits, const Tensor& targets, const char* op) {
  SYNCBN_CHECK(logits.defined() && targets.defined(), op, ": logits or targets is undefined, expected tensors");
  SYNCBN_CHECK(logits.rank() == 2, op, ": expected 2-D logits (N, C), got ", logits.rank(), "-D logits");
  SYNCBN_CHECK(logits.dtype() == DType::Float32 || logits.dtype() == DType::Float64, op, ": logits have dtype ",
               dtype_name(logits.dtype()), ", expected float32 or float64");
  SYNCBN_CHECK(targets.dtype() == DType::Int64, op, ": targets have dtype ", dtype_name(targets.dtype()),
               ", expected int64 class indices");
  SYNCBN_CHECK(targets.shape() == Shape{logits.size(0)}, op, ": targets have shape ", targets.shape(), ", expected ",
               Shape{logits.size(0)});
  SYNCBN_CHECK(targets.device() == logits.device(), op, ": targets are on ", targets.device(), ", expected ",
               logits.device(), " (the logits' device)");
  const std::int64_t n = logits.size(0), c = logits.size(1);
  SYNCBN_CHECK(n >= 1 && c >= 1, op, ": logits have shape ", logits.shape(), ", expected N >= 1 and C >= 1");
  // Out-of-range classes would index out of bounds: check them on the host
  // (a copy of N integers; a GPU caller synchronises here).
  const auto labels = targets.to_vector<std::int64_t>();
  for (std::size_t i = 0; i < labels.size(); ++i)
    SYNCBN_CHECK(labels[i] >= 0 && labels[i] < c, op, ": target ", i, " is class ", labels[i],
                 ", expected a class in [0, ", c, ")");
  return {n, c};
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const char* op) {
  const auto [n, c] = check_cross_entropy(logits, targets, op);
  Tensor loss = Tensor::empty(Shape{}, logits.dtype(), logits.device());
  detail::loss_kernels(logits.device().kind())
      .cross_entropy_forward(logits.device(), logits.dtype(), n, c, logits.raw_data(), targets.data<std::int64_t>(),
                             loss.raw_data());
  return loss;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_output, const char* op) {
  const auto [n, c] = check_cross_entropy(logits, targets, op);
  Tensor grad = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  detail::loss_kernels(logits.device().kind())
      .cross_entropy_backward(logits.device(), logits.dtype(), n, c, logits.raw_data(), targets.data<std::int64_t>(),
                              grad_output / static_cast<double>(n), grad.raw_data());
  return grad;
}

}  // namespace syncbn::core
