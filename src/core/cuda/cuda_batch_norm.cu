// CUDA backend: batch-norm kernels. Specification:
// tests/support/batch_norm_spec.hpp; numerics and tolerances:
// docs/numerics.md. Float64 accumulation of shifted values and float64
// element arithmetic (the H100/H200 targets run float64 at half the float32
// rate, and these kernels are memory-bound): differences and products of
// float32 values near the ends of its range stay finite, as on the CPU.
//
// The per-channel reductions are split: a channel's n*l elements are spread
// over `splits` blocks (enough blocks in all to fill the GPU even for C = 64),
// whose partial sums a second kernel adds in split order (deterministic for
// a given device: the split count follows its multiprocessor count). Each
// reduction has a kernel per layout, named as the CPU's entry functions:
// `*_planes_kernel` for channels-first (N, C, L), one block per channel and
// split; `*_rows_kernel` for (N, C) and channels-last rows, warps across 32
// channels. The element-wise kernels index either layout alike.

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {


// Blocks per channel for a reduction over `count` elements of each of c channels.
int splits_for(int device, long long c, long long count) {
  const long long target_blocks = 4LL * multiprocessor_count(device);
  const long long by_occupancy = (target_blocks + c - 1) / c;
  const long long by_work = std::max(1LL, count / (static_cast<long long>(kBlock) * 8));
  return static_cast<int>(std::max(1LL, std::min({by_occupancy, by_work, 1024LL})));
}

// Visits the elements of channel `ch` assigned to split `split` of `splits`:
// rows of l contiguous elements when l is large (no division), a flat index
// otherwise.
template <class Visit>
__device__ void for_channel_elements(long long n, long long c, long long l, long long ch, int split, int splits,
                                     Visit&& visit) {
  if (l >= kBlock) {
    for (long long i = split; i < n; i += splits) {
      const long long base = (i * c + ch) * l;
      for (long long k = threadIdx.x; k < l; k += kBlock) visit(base + k);
    }
  } else {
    const long long count = n * l;
    for (long long e = static_cast<long long>(split) * kBlock + threadIdx.x; e < count;
         e += static_cast<long long>(splits) * kBlock) {
      const long long i = e / l;
      visit((i * c + ch) * l + (e - i * l));
    }
  }
}

// Channels-last input (l == 1: rows of c channels; Note [Channel layouts]
// in core/batch_norm.cpp): a block of 32 channels x 8 row lanes, so that
// each warp reads 32 consecutive channels of a row (coalesced); split
// blockIdx.y takes rows split * 8 + lane, every splits * 8 rows, and the 8
// lanes' sums are added in lane order.
constexpr int kRowLanes = 8;

// Row splits of a channels-last reduction: enough blocks to fill the GPU.
int row_splits_for(int device, long long n, long long c) {
  const long long col_blocks = (c + 31) / 32;
  const long long target_blocks = 4LL * multiprocessor_count(device);
  const long long by_occupancy = (target_blocks + col_blocks - 1) / col_blocks;
  const long long by_work = std::max(1LL, n / (kRowLanes * 8));
  return static_cast<int>(std::max(1LL, std::min({by_occupancy, by_work, 65535LL})));
}

// body(at, ch, acc) over the rows of channel ch = blockIdx.x * 32 + lane
// that this block's split holds, acc its N sums; writes the split's sums to
// out[k][ch * splits + split].
template <int N, class Body>
__device__ void rows_partial(long long n, long long c, int splits, Body&& body, double* const (&out)[N]) {
  __shared__ double lane_sums[N][kRowLanes][32];
  const long long ch = static_cast<long long>(blockIdx.x) * 32 + threadIdx.x;
  double acc[N] = {};
  if (ch < c)
    for (long long r = static_cast<long long>(blockIdx.y) * kRowLanes + threadIdx.y; r < n;
         r += static_cast<long long>(splits) * kRowLanes)
      body(r * c + ch, ch, acc);
  for (int k = 0; k < N; ++k) lane_sums[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    for (int k = 0; k < N; ++k) {
      double total = 0;
      for (int lane = 0; lane < kRowLanes; ++lane) total += lane_sums[k][lane][threadIdx.x];
      out[k][ch * splits + blockIdx.y] = total;
    }
  }
}

dim3 rows_grid(long long c, int splits) { return dim3(static_cast<unsigned>((c + 31) / 32), static_cast<unsigned>(splits)); }
const dim3 kRowsBlock(32, kRowLanes);

// The fused activation (Note [Fused activation] in core/batch_norm.cpp), in
// float64 as the rest of these kernels: act'(z) is 1 for z > 0, else 0,
// alpha or alpha * exp(z); from y, y + alpha for elu.
struct DeviceFusion {
  core::ActivationKind kind;
  double alpha;
  bool from_output;

  __device__ double forward(double z) const {
    switch (kind) {
      case core::ActivationKind::Relu: return z > 0 ? z : 0.0;
      case core::ActivationKind::LeakyRelu: return z > 0 ? z : z * alpha;
      case core::ActivationKind::Elu: return z > 0 ? z : alpha * expm1(z);
      default: return z;
    }
  }
  __device__ double grad_from_z(double dy, double z) const {
    switch (kind) {
      case core::ActivationKind::Relu: return z > 0 ? dy : 0.0;
      case core::ActivationKind::LeakyRelu: return z > 0 ? dy : dy * alpha;
      case core::ActivationKind::Elu: return z > 0 ? dy : dy * alpha * exp(z);
      default: return dy;
    }
  }
  // dz and x - mean of one element; s is x, or y with from_output.
  __device__ void grad(double dy, double s, const double* coef4, double& dz, double& xmu) const {
    const double hi = coef4[0], lo = coef4[1], scale = coef4[2], shift = coef4[3];
    if (!from_output) {
      xmu = (s - hi) - lo;
      dz = grad_from_z(dy, xmu * scale + shift);
      return;
    }
    double z = s;
    dz = dy;
    if (kind == core::ActivationKind::LeakyRelu && s <= 0) {
      z = s / alpha;
      dz = dy * alpha;
    } else if (kind == core::ActivationKind::Elu && s <= 0) {
      z = log1p(s / alpha);
      dz = dy * (s + alpha);
    }
    xmu = (z - shift) / scale;
  }
};

DeviceFusion device_fusion(const core::detail::BatchNormFusion& f) { return {f.kind, f.alpha, f.from_output}; }

// N sums per block, reduced with CUB in a fixed order; thread 0 writes
// sum k to *out[k].
template <int N>
__device__ void block_sums(const double (&v)[N], double* const (&out)[N]) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp[N];
  double total[N];
  for (int k = 0; k < N; ++k) total[k] = Reduce(temp[k]).Sum(v[k]);
  if (threadIdx.x == 0)
    for (int k = 0; k < N; ++k) *out[k] = total[k];
}

template <class T>
__global__ void stats_planes_kernel(long long n, long long c, long long l, const T* x, int splits, double* ps,
                                    double* pss) {
  using C = typename ComputeOf<T>::type;
  const long long ch = blockIdx.x;
  const int split = static_cast<int>(blockIdx.y);
  const double shift = static_cast<double>(load_compute(x, ch * l));
  double sums[2] = {};
  for_channel_elements(n, c, l, ch, split, splits, [&](long long at) {
    const double d = static_cast<double>(load_compute(x, at)) - shift;
    sums[0] += d;
    sums[1] += d * d;
  });
  double* const out[2] = {&ps[ch * splits + split], &pss[ch * splits + split]};
  block_sums<2>(sums, out);
}

template <class T>
__global__ void stats_rows_kernel(long long n, long long c, const T* x, int splits, double* ps, double* pss) {
  const long long ch = static_cast<long long>(blockIdx.x) * 32 + threadIdx.x;
  const double shift = ch < c ? static_cast<double>(load_compute(x, ch)) : 0.0;
  double* const out[2] = {ps, pss};
  rows_partial<2>(
      n, c, splits,
      [&](long long at, long long, double (&acc)[2]) {
        const double d = static_cast<double>(load_compute(x, at)) - shift;
        acc[0] += d;
        acc[1] += d * d;
      },
      out);
}

template <class T>
__global__ void stats_finish_kernel(long long c, long long l, long long count, const T* x, int splits, const double* ps,
                                    const double* pss, double* mean, double* m2) {
  SYNCBN_GRID_STRIDE(ch, c) {
    double s = 0, ss = 0;
    for (int k = 0; k < splits; ++k) {
      s += ps[ch * splits + k];
      ss += pss[ch * splits + k];
    }
    const double local = s / static_cast<double>(count);
    mean[ch] = static_cast<double>(load_compute(x, ch * l)) + local;
    // Below 0 only by rounding; a NaN stays NaN (fmax would return 0).
    const double v = ss - s * local;
    m2[ch] = v < 0 ? 0.0 : v;
  }
}

void cuda_stats(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
                double* mean, double* m2) {
  if (c == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  const long long count = n * l;
  if (count == 0) {
    SYNCBN_CUDA_CHECK(cudaMemsetAsync(mean, 0, sizeof(double) * static_cast<std::size_t>(c), stream));
    SYNCBN_CUDA_CHECK(cudaMemsetAsync(m2, 0, sizeof(double) * static_cast<std::size_t>(c), stream));
    return;
  }
  const bool rows = l == 1;
  const int splits = rows ? row_splits_for(device.index(), n, c) : splits_for(device.index(), c, count);
  ScratchBuffer ps(device.index(), sizeof(double) * static_cast<std::size_t>(c * splits));
  ScratchBuffer pss(device.index(), sizeof(double) * static_cast<std::size_t>(c * splits));
  dispatch_floating_device(dtype, "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    if (rows) {
      stats_rows_kernel<T><<<rows_grid(c, splits), kRowsBlock, 0, stream>>>(n, c, static_cast<const T*>(x), splits,
                                                                            ps.as<double>(), pss.as<double>());
    } else {
      const dim3 grid(static_cast<unsigned>(c), static_cast<unsigned>(splits));
      stats_planes_kernel<T><<<grid, kBlock, 0, stream>>>(n, c, l, static_cast<const T*>(x), splits, ps.as<double>(),
                                                          pss.as<double>());
    }
    SYNCBN_CUDA_LAUNCH_CHECK();
    stats_finish_kernel<T><<<grid_for(c), kBlock, 0, stream>>>(c, l, count, static_cast<const T*>(x), splits,
                                                               ps.as<double>(), pss.as<double>(), mean, m2);
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

struct Partials {
  long long counts[core::kMaxReplicas];
  const double* means[core::kMaxReplicas];
  const double* m2s[core::kMaxReplicas];
};

__global__ void merge_kernel(long long c, int parts, Partials p, double* mean, double* m2) {
  SYNCBN_GRID_STRIDE(ch, c) {
    double na = 0, mean_a = 0, m2_a = 0;
    for (int k = 0; k < parts; ++k) {
      if (p.counts[k] == 0) continue;
      const double nb = static_cast<double>(p.counts[k]);
      if (na == 0) {
        na = nb;
        mean_a = p.means[k][ch];
        m2_a = p.m2s[k][ch];
        continue;
      }
      const double total = na + nb;
      const double delta = p.means[k][ch] - mean_a;
      mean_a += delta * (nb / total);
      m2_a += p.m2s[k][ch] + delta * delta * (na * nb / total);
      na = total;
    }
    mean[ch] = mean_a;
    m2[ch] = m2_a;
  }
}

void cuda_merge_stats(Device device, std::int64_t c, int parts, const std::int64_t* counts, const double* const* means,
                      const double* const* m2s, double* mean, double* m2) {
  SYNCBN_CHECK(parts >= 1 && parts <= core::kMaxReplicas, "batch_norm: ", parts, " partial statistics, expected 1 to ",
               core::kMaxReplicas);
  if (c == 0) return;
  DeviceGuard guard(device.index());
  Partials p{};
  for (int k = 0; k < parts; ++k) {
    p.counts[k] = counts[k];
    p.means[k] = means[k];
    p.m2s[k] = m2s[k];
  }
  merge_kernel<<<grid_for(c), kBlock, 0, stream_for(device.index())>>>(c, parts, p, mean, m2);
  SYNCBN_CUDA_LAUNCH_CHECK();
}

__global__ void finalize_kernel(long long c, long long count, const double* m2, double eps, bool clamp, double* invstd,
                                double* unbiased) {
  SYNCBN_GRID_STRIDE(ch, c) {
    const double n = static_cast<double>(count);
    const double var = count > 0 ? m2[ch] / n : 0.0;
    // max(var, eps) as std::max computes it: a NaN variance stays NaN
    // (fmax would return eps).
    invstd[ch] = 1.0 / sqrt(clamp ? (var < eps ? eps : var) : var + eps);
    unbiased[ch] = count > 1 ? m2[ch] / (n - 1.0) : 0.0;
  }
}

void cuda_finalize(Device device, std::int64_t c, std::int64_t count, const double* m2, double eps, bool eps_clamp,
                   double* invstd, double* unbiased_var) {
  if (c == 0) return;
  DeviceGuard guard(device.index());
  finalize_kernel<<<grid_for(c), kBlock, 0, stream_for(device.index())>>>(c, count, m2, eps, eps_clamp, invstd,
                                                                          unbiased_var);
  SYNCBN_CUDA_LAUNCH_CHECK();
}

// One block: thread 0 counts the batch, then every thread uses the new count.
template <class P>
__global__ void update_running_kernel(long long c, double momentum, const double* mean, const double* unbiased, P* rm,
                                      P* rv, long long* batches) {
  __shared__ double factor;
  if (threadIdx.x == 0) {
    const long long count = ++*batches;
    factor = momentum < 0 ? 1.0 / static_cast<double>(count) : momentum;
  }
  __syncthreads();
  // Factor 1 (momentum 1, or the first batch of a cumulative average) takes
  // the batch's value: an infinite old value times 1 - factor = 0 is NaN.
  const bool replace = factor == 1.0;
  for (long long ch = threadIdx.x; ch < c; ch += blockDim.x) {
    rm[ch] = static_cast<P>(replace ? mean[ch] : (1.0 - factor) * static_cast<double>(rm[ch]) + factor * mean[ch]);
    rv[ch] = static_cast<P>(replace ? unbiased[ch]
                                    : (1.0 - factor) * static_cast<double>(rv[ch]) + factor * unbiased[ch]);
  }
}

void cuda_update_running(Device device, DType param_dtype, std::int64_t c, double momentum, const double* mean,
                         const double* unbiased_var, void* running_mean, void* running_var,
                         std::int64_t* num_batches_tracked) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    update_running_kernel<P><<<1, kBlock, 0, stream>>>(c, momentum, mean, unbiased_var, static_cast<P*>(running_mean),
                                                       static_cast<P*>(running_var),
                                                       reinterpret_cast<long long*>(num_batches_tracked));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

// std::clamp's order of comparisons: a NaN stays NaN (fmin and fmax would drop it).
__device__ double clamp_to(double v, double lo, double hi) { return v < lo ? lo : (hi < v ? hi : v); }

template <class P>
__global__ void renorm_factors_kernel(long long c, const double* mean, const double* invstd, const P* rm, const P* rv,
                                      double eps, bool clamp, double rmax, double dmax, double* r, double* d) {
  SYNCBN_GRID_STRIDE(ch, c) {
    const double var = static_cast<double>(rv[ch]);
    const double sigma = sqrt(clamp ? (var < eps ? eps : var) : var + eps);
    r[ch] = clamp_to(1.0 / (invstd[ch] * sigma), 1.0 / rmax, rmax);
    d[ch] = clamp_to((mean[ch] - static_cast<double>(rm[ch])) / sigma, -dmax, dmax);
  }
}

void cuda_renorm_factors(Device device, DType param_dtype, std::int64_t c, const double* mean, const double* invstd,
                         const void* running_mean, const void* running_var, double eps, bool eps_clamp, double rmax,
                         double dmax, double* r, double* d) {
  if (c == 0) return;
  DeviceGuard guard(device.index());
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    renorm_factors_kernel<P><<<grid_for(c), kBlock, 0, stream_for(device.index())>>>(
        c, mean, invstd, static_cast<const P*>(running_mean), static_cast<const P*>(running_var), eps, eps_clamp,
        rmax, dmax, r, d);
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

template <class P>
__global__ void forward_coef_kernel(long long c, const double* mean, const double* invstd, const P* w, const P* b,
                                    double* coef) {
  SYNCBN_GRID_STRIDE(ch, c) {
    const double hi = static_cast<double>(static_cast<P>(mean[ch]));
    coef[4 * ch + 0] = hi;
    coef[4 * ch + 1] = static_cast<double>(static_cast<P>(mean[ch] - hi));
    coef[4 * ch + 2] = invstd[ch] * (w != nullptr ? static_cast<double>(w[ch]) : 1.0);
    coef[4 * ch + 3] = b != nullptr ? static_cast<double>(b[ch]) : 0.0;
  }
}

void cuda_forward_coefficients(Device device, DType param_dtype, std::int64_t c, const double* mean,
                               const double* invstd, const void* weight, const void* bias, double* coef) {
  if (c == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    forward_coef_kernel<P><<<grid_for(c), kBlock, 0, stream>>>(c, mean, invstd, static_cast<const P*>(weight),
                                                               static_cast<const P*>(bias), coef);
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

// Visits every element with its channel: planes of l elements when l is
// large, a flat index with a division otherwise.
template <class Visit>
__device__ void for_all_elements(long long n, long long c, long long l, Visit&& visit) {
  if (l >= kBlock) {
    for (long long plane = blockIdx.y; plane < n * c; plane += gridDim.y) {
      const long long ch = plane % c;
      for (long long k = blockIdx.x * static_cast<long long>(kBlock) + threadIdx.x; k < l;
           k += static_cast<long long>(gridDim.x) * kBlock)
        visit(plane * l + k, ch);
    }
  } else {
    SYNCBN_GRID_STRIDE(e, n * c * l) { visit(e, (e / l) % c); }
  }
}

dim3 elementwise_grid(long long n, long long c, long long l) {
  if (l >= kBlock) {
    const long long x = std::min<long long>((l + kBlock - 1) / kBlock, 64);
    return dim3(static_cast<unsigned>(x), static_cast<unsigned>(std::min<long long>(n * c, 65535)));
  }
  return dim3(grid_for(n * c * l));
}

// y may be x (the in-place mode): each element is read before it is written.
template <class T>
__global__ void apply_kernel(long long n, long long c, long long l, const T* x, const double* coef, DeviceFusion act,
                             T* y) {
  for_all_elements(n, c, l, [&](long long at, long long ch) {
    const double xmu = (to_double(x[at]) - coef[4 * ch]) - coef[4 * ch + 1];
    y[at] = from_double<T>(act.forward(xmu * coef[4 * ch + 2] + coef[4 * ch + 3]));
  });
}

void cuda_apply(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
                const double* coef, const core::detail::BatchNormFusion& fusion, void* y) {
  if (n * c * l == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  dispatch_floating_device(dtype, "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    apply_kernel<T><<<elementwise_grid(n, c, l), kBlock, 0, stream>>>(n, c, l, static_cast<const T*>(x), coef,
                                                                      device_fusion(fusion), static_cast<T*>(y));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

// The backward's sums of one element: dz, dz * (x - mean) and x - mean.
struct GradTerms {
  const DeviceFusion& act;
  __device__ void add(double dy, double s, const double* coef4, double (&acc)[3]) const {
    double dz, xmu;
    act.grad(dy, s, coef4, dz, xmu);
    acc[0] += dz;
    acc[1] += dz * xmu;
    acc[2] += xmu;
  }
};

template <class T>
__global__ void backward_planes_kernel(long long n, long long c, long long l, const T* dy, const T* x,
                                       const double* coef, DeviceFusion act, int splits, double* ps, double* psx,
                                       double* psu) {
  const long long ch = blockIdx.x;
  const int split = static_cast<int>(blockIdx.y);
  const GradTerms terms{act};
  double sums[3] = {};
  for_channel_elements(n, c, l, ch, split, splits,
                       [&](long long at) { terms.add(to_double(dy[at]), to_double(x[at]), coef + 4 * ch, sums); });
  const long long at = ch * splits + split;
  double* const out[3] = {&ps[at], &psx[at], &psu[at]};
  block_sums<3>(sums, out);
}

template <class T>
__global__ void backward_rows_kernel(long long n, long long c, const T* dy, const T* x, const double* coef,
                                     DeviceFusion act, int splits, double* ps, double* psx, double* psu) {
  const GradTerms terms{act};
  double* const out[3] = {ps, psx, psu};
  rows_partial<3>(
      n, c, splits,
      [&](long long at, long long ch, double (&acc)[3]) {
        terms.add(to_double(dy[at]), to_double(x[at]), coef + 4 * ch, acc);
      },
      out);
}

__global__ void backward_finish_kernel(long long c, int splits, const double* ps, const double* psx, const double* psu,
                                       double* sum_dy, double* sum_dy_xmu, double* sum_xmu) {
  SYNCBN_GRID_STRIDE(ch, c) {
    double s = 0, sx = 0, su = 0;
    for (int k = 0; k < splits; ++k) {
      s += ps[ch * splits + k];
      sx += psx[ch * splits + k];
      su += psu[ch * splits + k];
    }
    sum_dy[ch] = s;
    sum_dy_xmu[ch] = sx;
    sum_xmu[ch] = su;
  }
}

void cuda_backward_reduce(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                          const void* x, const double* coef, const core::detail::BatchNormFusion& fusion,
                          double* sum_dy, double* sum_dy_xmu, double* sum_xmu) {
  if (c == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  const long long count = n * l;
  if (count == 0) {
    for (double* out : {sum_dy, sum_dy_xmu, sum_xmu})
      SYNCBN_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * static_cast<std::size_t>(c), stream));
    return;
  }
  const bool rows = l == 1;
  const int splits = rows ? row_splits_for(device.index(), n, c) : splits_for(device.index(), c, count);
  const std::size_t partial_bytes = sizeof(double) * static_cast<std::size_t>(c * splits);
  ScratchBuffer ps(device.index(), partial_bytes);
  ScratchBuffer psx(device.index(), partial_bytes);
  ScratchBuffer psu(device.index(), partial_bytes);
  const DeviceFusion act = device_fusion(fusion);
  dispatch_floating_device(dtype, "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    if (rows) {
      backward_rows_kernel<T><<<rows_grid(c, splits), kRowsBlock, 0, stream>>>(
          n, c, static_cast<const T*>(dy), static_cast<const T*>(x), coef, act, splits, ps.as<double>(),
          psx.as<double>(), psu.as<double>());
    } else {
      const dim3 grid(static_cast<unsigned>(c), static_cast<unsigned>(splits));
      backward_planes_kernel<T><<<grid, kBlock, 0, stream>>>(n, c, l, static_cast<const T*>(dy),
                                                             static_cast<const T*>(x), coef, act, splits,
                                                             ps.as<double>(), psx.as<double>(), psu.as<double>());
    }
    SYNCBN_CUDA_LAUNCH_CHECK();
    backward_finish_kernel<<<grid_for(c), kBlock, 0, stream>>>(c, splits, ps.as<double>(), psx.as<double>(),
                                                               psu.as<double>(), sum_dy, sum_dy_xmu, sum_xmu);
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

template <class P>
__global__ void backward_coef_kernel(long long c, long long count, double clamped_invstd, const double* invstd,
                                     const P* w, const double* sum_dy, const double* sum_dy_xmu,
                                     const double* sum_xmu, double* coef_b) {
  SYNCBN_GRID_STRIDE(ch, c) {
    const double per = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    const double inv = invstd[ch];
    // The exact mean is mean + e (Note [The exact mean from the backward]).
    const double e = sum_xmu != nullptr ? sum_xmu[ch] * per : 0.0;
    // A clamped channel's invstd does not depend on its variance.
    const double b = inv >= clamped_invstd ? 0.0 : (sum_dy_xmu[ch] - e * sum_dy[ch]) * per * inv * inv;
    coef_b[3 * ch + 0] = sum_dy[ch] * per - e * b;
    coef_b[3 * ch + 1] = b;
    coef_b[3 * ch + 2] = inv * (w != nullptr ? static_cast<double>(w[ch]) : 1.0);
  }
}

template <class P>
__global__ void param_grads_kernel(long long c, const double* invstd, const double* sum_dy, const double* sum_dy_xmu,
                                   const double* total_sum_xmu, double per, P* gw, P* gb) {
  SYNCBN_GRID_STRIDE(ch, c) {
    const double e = total_sum_xmu != nullptr ? total_sum_xmu[ch] * per : 0.0;
    if (gw != nullptr)
      gw[ch] = static_cast<P>(static_cast<double>(gw[ch]) + (sum_dy_xmu[ch] - e * sum_dy[ch]) * invstd[ch]);
    if (gb != nullptr) gb[ch] = static_cast<P>(static_cast<double>(gb[ch]) + sum_dy[ch]);
  }
}

void cuda_backward_coefficients(Device device, DType param_dtype, std::int64_t c, std::int64_t count,
                                double clamp_eps, const double* invstd, const void* weight, const double* sum_dy,
                                const double* sum_dy_xmu, const double* sum_xmu, double* coef_b) {
  if (c == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    // The host computes the clamped invstd as the CPU finalize does (the
    // GPU's double sqrt and division are correctly rounded too).
    const double clamped_invstd = clamp_eps > 0 ? 1.0 / std::sqrt(clamp_eps) : HUGE_VAL;
    backward_coef_kernel<P><<<grid_for(c), kBlock, 0, stream>>>(c, count, clamped_invstd, invstd,
                                                                static_cast<const P*>(weight), sum_dy, sum_dy_xmu,
                                                                sum_xmu, coef_b);
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

void cuda_accumulate_param_grads(Device device, DType param_dtype, std::int64_t c, const double* invstd,
                                 const double* sum_dy, const double* sum_dy_xmu, const double* total_sum_xmu,
                                 std::int64_t count, void* grad_weight, void* grad_bias) {
  if (c == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  const bool corrected = count > 0 && total_sum_xmu != nullptr;
  const double per = corrected ? 1.0 / static_cast<double>(count) : 0.0;
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    param_grads_kernel<P><<<grid_for(c), kBlock, 0, stream>>>(c, invstd, sum_dy, sum_dy_xmu,
                                                              corrected ? total_sum_xmu : nullptr, per,
                                                              static_cast<P*>(grad_weight),
                                                              static_cast<P*>(grad_bias));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

// In float64 whatever the data type, as the CPU kernels (docs/numerics.md):
// g reaches 1 / sqrt(eps) when a channel's variance is far below eps.
template <class T>
__global__ void backward_apply_kernel(long long n, long long c, long long l, const T* dy, const T* x, const double* coef,
                                      const double* coef_b, DeviceFusion act, T* dx) {
  for_all_elements(n, c, l, [&](long long at, long long ch) {
    const double a = coef_b[3 * ch], b = coef_b[3 * ch + 1], g = coef_b[3 * ch + 2];
    double dz, xmu;
    act.grad(to_double(dy[at]), to_double(x[at]), coef + 4 * ch, dz, xmu);
    dx[at] = from_double<T>((dz - a - xmu * b) * g);
  });
}

void cuda_backward_apply(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                         const void* x, const double* coef, const double* coef_b,
                         const core::detail::BatchNormFusion& fusion, void* dx) {
  if (n * c * l == 0) return;
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  dispatch_floating_device(dtype, "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    backward_apply_kernel<T><<<elementwise_grid(n, c, l), kBlock, 0, stream>>>(
        n, c, l, static_cast<const T*>(dy), static_cast<const T*>(x), coef, coef_b, device_fusion(fusion),
        static_cast<T*>(dx));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace

const core::detail::BatchNormKernels kBatchNormKernels{
    cuda_stats,           cuda_merge_stats,           cuda_finalize,
    cuda_update_running,  cuda_renorm_factors,        cuda_forward_coefficients,  cuda_apply,
    cuda_backward_reduce, cuda_backward_coefficients, cuda_accumulate_param_grads,
    cuda_backward_apply};

}  // namespace syncbn::cuda::detail
