#pragma once
// The operation tables of the backends: one table per kernel family,
// chosen at run time by device kind (see Note [Backend tables]).
//
// Note [Backend tables]
// Every kernel family is a struct of function pointers. The CPU backend
// always provides one (src/core/cpu/, one per CPU level: Note [CPU dispatch]
// in cpu/isa.hpp), the CUDA backend where it was built (src/core/cuda/).
// core's public entry points (Tensor, ops, the batch-norm stages) validate
// their arguments, then call `<family>_kernels(device.kind())`; the layers
// above core reach the kernels only through those entry points. Asking for
// the CUDA table in a build without CUDA throws Unsupported. Plain float64
// references are the specification every backend is tested against
// (tests/support/; batch norm: tests/support/batch_norm_spec.hpp). Pointers are raw element pointers of the given dtype; counts
// are elements. CUDA entries enqueue on the device's stream and return
// without waiting, unless their comment says otherwise.

#include <cstddef>
#include <cstdint>

#include "syncbn/core/batch_norm_form.hpp"
#include "syncbn/core/device.hpp"
#include "syncbn/core/dtype.hpp"

namespace syncbn::core::detail {

/// Allocation, copies, fills and conversions.
struct MemoryKernels {
  /// Allocates `nbytes` (> 0) on `device`; throws on failure.
  void* (*allocate)(Device device, std::size_t nbytes);
  /// Releases memory from allocate() of `nbytes`; never throws.
  void (*release)(Device device, void* ptr, std::size_t nbytes) noexcept;
  /// Copies `nbytes` from `src` on `src_device` to `dst` on `dst_device`.
  /// The CUDA table handles every pair that involves a GPU.
  void (*copy)(void* dst, Device dst_device, const void* src, Device src_device, std::size_t nbytes);
  /// Sets n elements of `dtype` to `value` (rounded to dtype).
  void (*fill)(Device device, void* dst, DType dtype, std::int64_t n, double value);
  /// Converts n elements from `src_dtype` to `dst_dtype` (round to nearest even).
  void (*convert)(Device device, void* dst, DType dst_dtype, const void* src, DType src_dtype, std::int64_t n);
  /// Swaps the last two dimensions of `batches` row-major (rows x cols)
  /// matrices of `element_size`-byte elements (2, 4 or 8) into dst, which
  /// does not overlap src: the permutation between (N, C, L) and (N, L, C).
  void (*transpose)(Device device, std::size_t element_size, std::int64_t batches, std::int64_t rows,
                    std::int64_t cols, const void* src, void* dst);
  /// Waits until the device's queued work is done (CPU: no-op).
  void (*synchronize)(Device device);
};

/// Element-wise binary operators.
enum class BinaryOp : std::uint8_t { Add, Sub, Mul };

/// The constants of one Adam or AdamW step of one tensor, computed on the
/// host from the options and the step count (core::adam_update_).
struct AdamCoefficients {
  double grad_decay;   ///< Adam's L2 weight decay: g += grad_decay * p (0 for AdamW)
  double param_scale;  ///< AdamW's decoupled decay: p *= param_scale, 1 - lr * weight_decay (1 for Adam)
  double beta1;
  double beta2;
  double step_size;              ///< lr / (1 - beta1^step)
  double bias_correction2_sqrt;  ///< sqrt(1 - beta2^step)
  double eps;
};

/// Element-wise arithmetic (float32 / float64).
struct ElementwiseKernels {
  /// out[i] = a[i] op b[i]; out may alias a or b.
  void (*binary)(Device device, BinaryOp op, DType dtype, std::int64_t n, const void* a, const void* b, void* out);
  /// y[i] = alpha * x[i] + beta * y[i].
  void (*axpby)(Device device, DType dtype, std::int64_t n, double alpha, const void* x, double beta, void* y);
  /// x[i] = alpha * x[i].
  void (*scale)(Device device, DType dtype, std::int64_t n, double alpha, void* x);
  /// One Adam step of every element, computed in float64 and stored once in
  /// the dtype (Note [Adam step] in src/core/ops.cpp), in this order:
  ///   g = grad + grad_decay * p;  p = param_scale * p
  ///   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
  ///   amsgrad (max_exp_avg_sq not null): vmax = max(vmax, v), NaN propagating
  ///   p = p - step_size * m / (sqrt(vmax or v) / bias_correction2_sqrt + eps)
  /// param, exp_avg, exp_avg_sq and max_exp_avg_sq do not overlap.
  void (*adam)(Device device, DType dtype, std::int64_t n, const AdamCoefficients& c, void* param, const void* grad,
               void* exp_avg, void* exp_avg_sq, void* max_exp_avg_sq);
};

/// Reductions, accumulated in float64 whatever the dtype.
struct ReduceKernels {
  /// out[0] = sum of x[0..n).
  void (*sum_all)(Device device, DType dtype, std::int64_t n, const void* x, void* out);
  /// out[j] = sum over i of x[i * cols + j], for a rows x cols matrix.
  void (*sum_rows)(Device device, DType dtype, std::int64_t rows, std::int64_t cols, const void* x, void* out);
  /// out[i] = srcs[0][i] + srcs[1][i] + ... in that order, for `count`
  /// (<= core::kMaxReplicas) sources on `device`; out may alias srcs[0].
  void (*sum_many)(Device device, DType dtype, std::int64_t n, const void* const* srcs, int count, void* out);
};

/// Dense matrix products (float32 / float64), row-major.
struct BlasKernels {
  /// C = alpha * op(A) * op(B) + beta * C with op(A) m x k and op(B) k x n;
  /// A is stored m x k (k x m when trans_a), B k x n (n x k when trans_b).
  /// beta == 0 never reads C. The CPU levels' own GEMM sums every element of
  /// C in an order that does not depend on m or n, so splitting a batch
  /// across replicas leaves every output row bit-identical; the BLAS that
  /// matmul_ uses by default on the CPU (Note [CPU GEMM engines] in
  /// cpu/cpu_blas.cpp) and cuBLAS (CUDA) may choose another kernel, and
  /// another order, for another m.
  void (*gemm)(Device device, DType dtype, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
               double alpha, const void* a, const void* b, double beta, void* c);
};

/// Activations (float32 / float64).
struct ActivationKernels {
  /// y = max(x, 0).
  void (*relu_forward)(Device device, DType dtype, std::int64_t n, const void* x, void* y);
  /// dx = dy where y > 0, else 0.
  void (*relu_backward)(Device device, DType dtype, std::int64_t n, const void* dy, const void* y, void* dx);
};

/// The activation fused into the element-wise batch-norm kernels (Note
/// [Fused activation] in core/batch_norm.cpp), checked by the caller: alpha
/// is LeakyRelu's slope (>= 0) or Elu's alpha (> 0); from_output needs an
/// invertible activation (not Relu) and a non-zero scale in every channel.
/// relu_mask (Note [The relu mask] in core/batch_norm.cpp): where set, z > 0
/// as bits, which apply writes and the backward kernels read in place of
/// recomputing z; set only for Relu from x on the CPU, for float32 and the
/// 16-bit types (relu_mask_bytes of them), null everywhere else.
struct BatchNormFusion {
  ActivationKind kind = ActivationKind::Identity;
  double alpha = 0.0;
  bool from_output = false;
  std::uint8_t* relu_mask = nullptr;
};

/// The CPU's relu mask of x viewed as (n, c, l): one bit per element, a
/// byte per eight, each run starting on a byte of its own: a row of c
/// channels when l == 1 (channels-last and (N, C) input), a channel's l
/// values of one sample otherwise.
constexpr std::int64_t relu_mask_run_bytes(std::int64_t c, std::int64_t l) noexcept {
  return ((l == 1 ? c : l) + 7) / 8;
}
constexpr std::int64_t relu_mask_bytes(std::int64_t n, std::int64_t c, std::int64_t l) noexcept {
  return (l == 1 ? n : n * c) * relu_mask_run_bytes(c, l);
}

/// Batch normalization over x viewed as (n, c, l): channel j holds the n*l
/// elements x[i][j][k]. Statistics and coefficients are float64 arrays of
/// length c on the device (docs/numerics.md). Parameters and running statistics have
/// `param_dtype` (float64 for float64 input, float32 otherwise); x may also
/// be float16 / bfloat16 on CUDA (computed in float32).
struct BatchNormKernels {
  /// Per-channel mean and M2 (sum of squared deviations from the mean) of
  /// this shard, from sums shifted by each channel's first element.
  void (*stats)(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x, double* mean,
                double* m2);
  /// Merges `parts` partial (count, mean, M2) per channel in order (Chan et
  /// al.); counts are host integers, parts with count 0 are skipped.
  void (*merge_stats)(Device device, std::int64_t c, int parts, const std::int64_t* counts, const double* const* means,
                      const double* const* m2s, double* mean, double* m2);
  /// invstd = 1/sqrt(var + eps) (or 1/sqrt(max(var, eps)) with eps_clamp) and
  /// the unbiased variance m2/(count-1), from the biased var = m2/count.
  void (*finalize)(Device device, std::int64_t c, std::int64_t count, const double* m2, double eps, bool eps_clamp,
                   double* invstd, double* unbiased_var);
  /// Counts the batch (++*num_batches_tracked, an int64 on the device) and
  /// updates running = (1 - f) * running + f * batch for mean and variance,
  /// with f = momentum, or f = 1 / num_batches_tracked (a cumulative average)
  /// when momentum < 0. Runs without a host round-trip.
  void (*update_running)(Device device, DType param_dtype, std::int64_t c, double momentum, const double* mean,
                         const double* unbiased_var, void* running_mean, void* running_var,
                         std::int64_t* num_batches_tracked);
  /// Batch Renormalization's per-channel r = clamp(sigma_batch / sigma,
  /// 1/rmax, rmax) and d = clamp((mean - running_mean) / sigma, -dmax, dmax),
  /// sigma = sqrt(running_var + eps) (sqrt(max(running_var, eps)) with
  /// eps_clamp), sigma_batch = 1 / invstd.
  void (*renorm_factors)(Device device, DType param_dtype, std::int64_t c, const double* mean, const double* invstd,
                         const void* running_mean, const void* running_var, double eps, bool eps_clamp, double rmax,
                         double dmax, double* r, double* d);
  /// Per-channel forward coefficients {mean_hi, mean_lo, scale, shift}
  /// (4c doubles) from mean, invstd and the optional affine weight and bias
  /// (null: 1 and 0). The layout of the 4c values, and of the 3c backward
  /// coefficients, is the backend's own (CPU: one plane per coefficient;
  /// CUDA: one record per channel): they pass only between its kernels.
  void (*forward_coefficients)(Device device, DType param_dtype, std::int64_t c, const double* mean,
                               const double* invstd, const void* weight, const void* bias, double* coef);
  /// y = act(z), z = ((x - mean_hi) - mean_lo) * scale + shift; y may be x
  /// itself (the in-place mode).
  void (*apply)(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
                const double* coef, const BatchNormFusion& fusion, void* y);
  /// Per-channel sum(dz), sum(dz * (x - mean)) and sum(x - mean) of this
  /// shard, dz = dy * act'(z) (coef from the forward, whose mean the sums
  /// are about). `s` is x, or y = act(z) when fusion.from_output (x - mean =
  /// (act^-1(y) - shift) / scale).
  void (*backward_reduce)(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                          const void* s, const double* coef, const BatchNormFusion& fusion, double* sum_dy,
                          double* sum_dy_xmu, double* sum_xmu);
  /// Per-channel backward coefficients {a, b, g} (3c doubles) from the sums
  /// over all `count` elements of the batch, about the exact mean mean + e
  /// with e = sum_xmu / count (sum_xmu null: e = 0): b = (sum_dy_xmu - e *
  /// sum_dy) / count * invstd^2, a = sum_dy / count - e * b (x - mean is
  /// what backward_apply reads), g = invstd * weight (weight null: 1).
  /// count 0 means the statistics were constants (eval mode): a = b = 0.
  /// clamp_eps > 0 (clamp mode): b = 0 for a channel whose invstd is
  /// 1 / sqrt(clamp_eps), whose variance was clamped.
  void (*backward_coefficients)(Device device, DType param_dtype, std::int64_t c, std::int64_t count,
                                double clamp_eps, const double* invstd, const void* weight, const double* sum_dy,
                                const double* sum_dy_xmu, const double* sum_xmu, double* coef_b);
  /// Adds parameter gradients from a part's sums about the exact mean of a
  /// group of `count` values with total_sum_xmu (null or count 0: no
  /// correction): grad_weight += (sum_dy_xmu - total_sum_xmu / count *
  /// sum_dy) * invstd, grad_bias += sum_dy (either may be null: skipped).
  void (*accumulate_param_grads)(Device device, DType param_dtype, std::int64_t c, const double* invstd,
                                 const double* sum_dy, const double* sum_dy_xmu, const double* total_sum_xmu,
                                 std::int64_t count, void* grad_weight, void* grad_bias);
  /// dx = (dz - a - (x - mean) * b) * g, computed in float64, with dz and
  /// x - mean as in backward_reduce (`s` is x, or y when fusion.from_output).
  void (*backward_apply)(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                         const void* s, const double* coef, const double* coef_b, const BatchNormFusion& fusion,
                         void* dx);
};

/// Losses (float32 / float64 logits, int64 targets).
struct LossKernels {
  /// loss[0] = mean over rows of (logsumexp(row) - row[target]); targets
  /// must be in [0, c) (checked by the caller).
  void (*cross_entropy_forward)(Device device, DType dtype, std::int64_t n, std::int64_t c, const void* logits,
                                const std::int64_t* targets, void* loss);
  /// grad = (softmax(row) - onehot(target)) * scale.
  void (*cross_entropy_backward)(Device device, DType dtype, std::int64_t n, std::int64_t c, const void* logits,
                                 const std::int64_t* targets, double scale, void* grad);
};


/// A 2-D convolution with every size resolved and checked (core/conv.cpp):
/// x (n, c_in, h, w), weight (c_out, c_in / groups, kh, kw), y (n, c_out, oh, ow).
struct Conv2dShape {
  std::int64_t n, c_in, h, w, c_out, kh, kw, oh, ow;
  std::int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
  /// x, y and their gradients NHWC rather than NCHW; the weight is always
  /// (c_out, c_in / groups, kh, kw).
  bool channels_last;
};

/// Convolutions (float32 / float64), NCHW or NHWC (Conv2dShape::channels_last).
struct ConvKernels {
  /// y = conv(x, weight) + bias (bias null: none).
  void (*forward)(Device device, DType dtype, const Conv2dShape& s, const void* x, const void* weight,
                  const void* bias, void* y);
  /// dx = the input gradient for dy (dx is written, not accumulated).
  void (*backward_input)(Device device, DType dtype, const Conv2dShape& s, const void* dy, const void* weight,
                         void* dx);
  /// dweight += the weight gradient for input x and dy.
  void (*backward_weight)(Device device, DType dtype, const Conv2dShape& s, const void* dy, const void* x,
                          void* dweight);
  /// dbias[j] += the sum of dy (n, c, l) over n and the l positions of
  /// channel j (NHWC: n = N * oh * ow rows, l = 1).
  void (*backward_bias)(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                        void* dbias);
};

/// A 2-D pooling with every size resolved and checked (core/pool.cpp):
/// x (n, c, h, w) -> y (n, c, oh, ow), or NHWC with channels_last.
struct Pool2dShape {
  std::int64_t n, c, h, w, oh, ow;
  std::int64_t kh, kw, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  bool count_include_pad;
  bool channels_last;
};

/// Where pixel q (h * w + w) of plane p (n * c + channel) of a tensor of
/// `pixels` pixels per plane lies: NCHW p * pixels + q, NHWC (n * pixels +
/// q) * c + channel. The pooling kernels walk planes in either layout.
#ifdef __CUDACC__
__host__ __device__
#endif
inline std::int64_t plane_element(const Pool2dShape& s, std::int64_t p, std::int64_t q, std::int64_t pixels) {
  return s.channels_last ? ((p / s.c) * pixels + q) * s.c + p % s.c : p * pixels + q;
}

/// Pooling (float32 / float64), NCHW or NHWC (Pool2dShape::channels_last).
/// The backward kernels write dx whole.
struct PoolKernels {
  /// y = the window maxima; indices = their positions h * w_in + w in the plane.
  void (*max_forward)(Device device, DType dtype, const Pool2dShape& s, const void* x, void* y,
                      std::int64_t* indices);
  void (*max_backward)(Device device, DType dtype, const Pool2dShape& s, const void* dy,
                       const std::int64_t* indices, void* dx);
  /// y = the window means (padding as zeros, divisor per count_include_pad).
  void (*avg_forward)(Device device, DType dtype, const Pool2dShape& s, const void* x, void* y);
  void (*avg_backward)(Device device, DType dtype, const Pool2dShape& s, const void* dy, void* dx);
  /// Adaptive windows (s.kh ... s.dilation_w unused).
  void (*adaptive_avg_forward)(Device device, DType dtype, const Pool2dShape& s, const void* x, void* y);
  void (*adaptive_avg_backward)(Device device, DType dtype, const Pool2dShape& s, const void* dy, void* dx);
};


/// The tables of a device kind. Throw Unsupported for CUDA in a build without CUDA.
const MemoryKernels& memory_kernels(DeviceKind kind);
const ElementwiseKernels& elementwise_kernels(DeviceKind kind);
const ReduceKernels& reduce_kernels(DeviceKind kind);
const BlasKernels& blas_kernels(DeviceKind kind);
const ActivationKernels& activation_kernels(DeviceKind kind);
const BatchNormKernels& batchnorm_kernels(DeviceKind kind);
const LossKernels& loss_kernels(DeviceKind kind);
/// The CPU convolutions need a BLAS (SYNCBN_BLAS; float32 runs on oneDNN
/// where the build has it and no BLAS) and the CUDA ones cuDNN:
/// Unsupported where this build has none.
const ConvKernels& conv_kernels(DeviceKind kind);
const PoolKernels& pool_kernels(DeviceKind kind);

/// The memory table that copies between these two devices (CUDA whenever
/// either is a GPU).
const MemoryKernels& copy_kernels(Device dst, Device src);

}  // namespace syncbn::core::detail
