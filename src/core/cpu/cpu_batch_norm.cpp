// CPU backend: batch-norm kernels, tuned (vector blocks, float32 lanes
// flushed into float64, folded per-channel terms) and compiled once per CPU
// level. Their specification is tests/support/batch_norm_spec.hpp, and
// docs/numerics.md gives the numerical choices (shifted sums, float64
// accumulation, Chan merges, the hi/lo mean) and the accuracy every stage is
// tested to.

#include "cpu/isa.hpp"  // first: this file is compiled once per CPU level

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/dispatch.hpp"
#include "cpu/cpu_kernels.hpp"
#include "cpu/half_float.hpp"
#include "cpu/simd.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

// ---- element types ----------------------------------------------------------

constexpr std::int64_t kChunk = 1024;  // staging chunk for 16-bit inputs; float32 flush period

void to_float(float* dst, const void* src, DType dtype, std::int64_t offset, std::int64_t n) {
  const auto* s = static_cast<const std::uint16_t*>(src) + offset;
  if (dtype == DType::Float16)
    for (std::int64_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]);
  else
    for (std::int64_t i = 0; i < n; ++i) dst[i] = bfloat16_to_float(s[i]);
}

void from_float(void* dst, DType dtype, std::int64_t offset, const float* src, std::int64_t n) {
  auto* d = static_cast<std::uint16_t*>(dst) + offset;
  if (dtype == DType::Float16)
    for (std::int64_t i = 0; i < n; ++i) d[i] = float_to_half(src[i]);
  else
    for (std::int64_t i = 0; i < n; ++i) d[i] = float_to_bfloat16(src[i]);
}


// Reads [offset, offset + n) of x as T (float for the 16-bit types) and calls
// fn(pointer, n) over runs of at most kChunk elements for 16-bit types.
template <class T, class Fn>
void for_runs(const void* x, DType dtype, std::int64_t offset, std::int64_t n, Fn&& fn) {
  if constexpr (std::is_same_v<T, float>) {
    if (dtype == DType::Float32) {
      fn(static_cast<const float*>(x) + offset, n);
      return;
    }
    float buffer[kChunk];
    for (std::int64_t k = 0; k < n; k += kChunk) {
      const std::int64_t len = std::min(kChunk, n - k);
      to_float(buffer, x, dtype, offset + k, len);
      fn(buffer, len);
    }
  } else {
    fn(static_cast<const double*>(x) + offset, n);
  }
}

// ---- vectorised runs ----------------------------------------------------------

constexpr std::int64_t kAccumulators = 4;

// Two per-channel sums fed run by run (a channel's rows of l elements), in
// float64 lanes of T vectors (Notes [Moments in float64] and [Gradient sums
// in float64]) that persist across runs; odd elements go straight to a and
// b.
template <class T>
class PairSums {
  using A = WideVec<T>;

 public:
  double a = 0, b = 0;

  // body(i, va, vb) adds the vector at element i; tail(i, a, b) one element.
  // The vectors live in locals for the run: as members, every add was a
  // load and a store through memory (store-forwarding chains that made the
  // loop compute-bound at half the L2 rate).
  template <class Body, class Tail>
  void run(std::int64_t len, Body&& body, Tail&& tail) {
    constexpr std::int64_t lanes = kLanes<T>;
    A va[kAccumulators], vb[kAccumulators];
    for (std::int64_t q = 0; q < kAccumulators; ++q) {
      va[q] = va_[q];
      vb[q] = vb_[q];
    }
    std::int64_t k = 0;
    for (; k + kAccumulators * lanes <= len; k += kAccumulators * lanes)
      for (std::int64_t q = 0; q < kAccumulators; ++q) body(k + q * lanes, va[q], vb[q]);
    for (; k + lanes <= len; k += lanes) {  // leftover vectors rotate over the accumulators
      body(k, va[next_], vb[next_]);
      if (++next_ == kAccumulators) next_ = 0;
    }
    for (; k < len; ++k) tail(k, a, b);
    for (std::int64_t q = 0; q < kAccumulators; ++q) {
      va_[q] = va[q];
      vb_[q] = vb[q];
    }
  }

  // Adds what the vectors hold to a and b (call once, before reading them).
  void flush() {
    for (std::int64_t q = 0; q < kAccumulators; ++q) {
      for (std::int64_t lane = 0; lane < kLanes<T>; ++lane) {
        a += va_[q][lane];
        b += vb_[q][lane];
      }
      va_[q] = A{};
      vb_[q] = A{};
    }
  }

 private:
  A va_[kAccumulators] = {}, vb_[kAccumulators] = {};
  int next_ = 0;
};

// Adds sum(x - shift) and sum((x - shift)^2) over a run to `sums`, in
// float64 lanes (Note [Moments in float64]).
template <class T>
void shifted_sums(const T* __restrict x, std::int64_t len, T shift, PairSums<T>& sums) {
  const WideVec<T> vshift = widen<T>(splat(shift));
  sums.run(
      len,
      [&](std::int64_t i, WideVec<T>& a, WideVec<T>& b) {
        const WideVec<T> d = widen<T>(load(x + i)) - vshift;
        a += d;
        b += d * d;
      },
      [&](std::int64_t i, double& a, double& b) {
        const double d = static_cast<double>(x[i]) - static_cast<double>(shift);
        a += d;
        b += d * d;
      });
}

// ---- fused activations (Note [Fused activation] in core/batch_norm.cpp) -----

using core::ActivationKind;
using core::detail::BatchNormFusion;

// Whether V is a Vec rather than a scalar. (A Vec passed as a template
// argument, to a trait or a class, loses its vector attribute, so the test
// is on the size, and vector terms have a struct of their own.)
template <class V>
constexpr bool kIsVector = sizeof(V) > sizeof(double);

// f applied to every lane of v (a Vec or a scalar), for what has no vector
// instruction (exp, log1p: elu only).
template <class V, class F>
V map_lanes(V v, F&& f) {
  if constexpr (!kIsVector<V>) {
    return f(v);
  } else {
    for (std::size_t lane = 0; lane < sizeof(V) / sizeof(v[0]); ++lane) v[lane] = f(v[lane]);
    return v;
  }
}

// cond ? a : b, lane by lane for vectors; for scalars through a bit mask:
// as a branch, the compare was mispredicted half the time on the elements
// after each run's last whole vector (4 of every 196 for 64x256x14x14),
// which made the fused relu's gradient sums 1.7x slower than plain ones.
template <class V, class M>
inline V where(M cond, V a, V b) {
  if constexpr (kIsVector<V>) {
    return cond ? a : b;
  } else {
    using Bits = std::conditional_t<sizeof(V) == 4, std::uint32_t, std::uint64_t>;
    const Bits mask = Bits{0} - static_cast<Bits>(cond);
    return std::bit_cast<V>((std::bit_cast<Bits>(a) & mask) | (std::bit_cast<Bits>(b) & ~mask));
  }
}

// The activation K on a vector or a scalar V, alpha of V's element type.
template <ActivationKind K>
struct Act {
  // act(z)
  template <class V, class E>
  static V forward(V z, E alpha) {
    if constexpr (K == ActivationKind::Identity) return z;
    else if constexpr (K == ActivationKind::Relu) return where(z > V{}, z, V{});
    else if constexpr (K == ActivationKind::LeakyRelu) return where(z > V{}, z, z * alpha);
    else return map_lanes(z, [alpha](auto e) { return e > 0 ? e : alpha * std::expm1(e); });
  }
  // dy * act'(z)
  template <class V, class E>
  static V grad_from_z(V dy, V z, E alpha) {
    if constexpr (K == ActivationKind::Identity) return dy;
    else if constexpr (K == ActivationKind::Relu) return where(z > V{}, dy, V{});
    else if constexpr (K == ActivationKind::LeakyRelu) return where(z > V{}, dy, dy * alpha);
    else return where(z > V{}, dy, dy * map_lanes(z, [alpha](auto e) { return alpha * std::exp(e); }));
  }
  // dy * act'(z) from y = act(z): y > 0 exactly where z > 0, and elu's
  // alpha * exp(z) is y + alpha.
  template <class V, class E>
  static V grad_from_y(V dy, V y, E alpha) {
    if constexpr (K == ActivationKind::Identity) return dy;
    else if constexpr (K == ActivationKind::Relu) return where(y > V{}, dy, V{});
    else if constexpr (K == ActivationKind::LeakyRelu) return where(y > V{}, dy, dy * alpha);
    else return where(y > V{}, dy, dy * (y + alpha));
  }
  // z from y (invertible activations; relu is refused before any kernel)
  template <class V, class E>
  static V inverse(V y, E alpha) {
    if constexpr (K == ActivationKind::Identity || K == ActivationKind::Relu) return y;
    else if constexpr (K == ActivationKind::LeakyRelu) return where(y > V{}, y, y / alpha);
    else return map_lanes(y, [alpha](auto e) { return e > 0 ? e : std::log1p(e / alpha); });
  }
};

// What the backward kernels need of one channel (or one vector of
// channels), in the data's type: the mean's hi and lo parts; the forward's
// halved mean, doubled scale and offset, to recompute z as the forward did;
// and the shift (bias) that the in-place mode subtracts from z.
template <class V>
struct ChannelTerms {
  V hi, lo, half_hi, twice_scale, offset, shift;
};

// The same for a vector of channels.
template <class T>
struct VectorTerms {
  Vec<T> hi, lo, half_hi, twice_scale, offset, shift;
};

// dz = dy * act'(z) and u, one element or vector (V), where x - mean = u
// from x, or u / scale from y (u = act^-1(y) - shift). From x, z is
// recomputed as the forward did, from d = x / 2 - hi / 2; u is
// (x - hi) - lo for the gradient sums, or d itself (Halved) for the
// backward's element-wise step, whose kTwiceBg term expects it. The identity
// from x is plain batch norm: dz = dy.
template <ActivationKind K, bool FromOutput, bool Halved = false, class V, class Terms, class E>
inline void fused_grad(V dy, V s, const Terms& t, E alpha, V& dz, V& u) {
  if constexpr (FromOutput) {
    dz = Act<K>::grad_from_y(dy, s, alpha);
    u = Act<K>::inverse(s, alpha) - t.shift;
  } else {
    const V d = s * E(0.5) - t.half_hi;
    if constexpr (Halved) u = d;
    else u = (s - t.hi) - t.lo;
    if constexpr (K == ActivationKind::Identity) dz = dy;
    else dz = Act<K>::grad_from_z(dy, d * t.twice_scale + t.offset, alpha);
  }
}

template <class T>
VectorTerms<T> splat_terms(const ChannelTerms<T>& t) {
  return {splat(t.hi), splat(t.lo), splat(t.half_hi), splat(t.twice_scale), splat(t.offset), splat(t.shift)};
}

// Calls fn(std::integral_constant<ActivationKind, K>, std::bool_constant<from_output>).
template <class Fn>
void dispatch_fusion(const BatchNormFusion& fusion, Fn&& fn) {
  auto with = [&]<ActivationKind K>(std::integral_constant<ActivationKind, K> kind) {
    if (fusion.from_output) fn(kind, std::true_type{});
    else fn(kind, std::false_type{});
  };
  switch (fusion.kind) {
    case ActivationKind::Relu: with(std::integral_constant<ActivationKind, ActivationKind::Relu>{}); return;
    case ActivationKind::LeakyRelu: with(std::integral_constant<ActivationKind, ActivationKind::LeakyRelu>{}); return;
    case ActivationKind::Elu: with(std::integral_constant<ActivationKind, ActivationKind::Elu>{}); return;
    default: with(std::integral_constant<ActivationKind, ActivationKind::Identity>{}); return;
  }
}

// Note [Moments in float64]
// The mean enters every later quantity, and grad_weight through
// sum(dy * (x - mean)) = sum(dy * (x - mean')) + (mean' - mean) * sum(dy):
// with mean(dy) far from 0 a mean off by 1e-9 moves grad_weight of 8
// replicas of 16k values per channel by 1e-4 (measured: 2.2e-5 of max(1,
// |dw|) with float32 partials of 32 shifted values). So the shifted values
// x - x0 are formed and summed, and squared, in float64 lanes: x - x0 is
// exact there, and no partial sum is rounded to float32 (which the float32
// partials flushed into float64 every 32 values, used before, did). What
// the float64 lanes cost: docs/performance.md, "The exact reductions".

// Note [Gradient sums in float64]
// The gradient sums enter dx through mean(dy) and mean(dy * (x - mean)),
// multiplied by g = w * invstd, which reaches 1 / sqrt(eps) (316 for eps
// 1e-5) when the variance is far below eps: a float32 rounding of mean(dy)
// alone (6e-8 of it) then moves dx by 1.2e-5 of mean(dy) (measured: 1.8e-5
// of max(1, |dx|) for 45 rows with a spread of 1e-4 and mean(dy) 0.65), and
// grad_weight of 8 replicas of 16k values per channel, summed from float32
// partials of 32 products each, was off by 6.4e-5 of max(1, |dw|). So the
// terms are summed in float64 lanes: dz exactly, and dz * x, the exact
// product of two float32 values, from which center_gradient_sums makes
// sum(dz * (x - mean)); no term and no partial sum is rounded to float32.
// From the output (in place) u comes from y in float32 as before, and only
// the products and sums are float64. Cost: docs/performance.md, "The exact
// reductions".

// Float64 lanes of T vectors and float64 of T scalars.
template <class T>
struct ToWide {
  template <class V>
  auto operator()(V v) const {
    if constexpr (kIsVector<V>) return widen<T>(v);
    else return static_cast<double>(v);
  }
};

// From x, b takes sum(dz * x), exact products of float32 values summed in
// float64, and fast_gradient_sums subtracts mean * sum(dz) once per channel
// at the end: one conversion and one fused multiply-add per vector fewer
// than forming x - mean in float64 per element (measured on 256x1024:
// forward+backward 1.19x the float32 sums' time against 1.25x), and exact
// enough: the float64 rounding of sum(dz * x) is 1e-16 of sum(|dz * x|),
// 1e-9 of the result for |mean| = 1e4 x std and a million values.
template <ActivationKind K, bool FromOutput, class V, class W, class Terms, class E, class Wide>
inline void add_grad_terms(V dy, V s, const Terms& t, E alpha, W& a, W& b, Wide wide) {
  V dz, u;
  fused_grad<K, FromOutput>(dy, s, t, alpha, dz, u);
  const W wdz = wide(dz);
  a += wdz;
  if constexpr (FromOutput) b += wdz * wide(u);
  else b += wdz * wide(s);
}

// Adds sum(dz) and sum(dz * u) over a run of one channel to `sums`.
template <ActivationKind K, bool FromOutput, class T>
void gradient_sums(const T* __restrict dy, const T* __restrict s, std::int64_t len, const ChannelTerms<T>& t, T alpha,
                   PairSums<T>& sums) {
  const VectorTerms<T> vt = splat_terms(t);
  sums.run(
      len,
      [&](std::int64_t i, WideVec<T>& a, WideVec<T>& b) {
        add_grad_terms<K, FromOutput>(load(dy + i), load(s + i), vt, alpha, a, b, ToWide<T>{});
      },
      [&](std::int64_t i, double& a, double& b) {
        add_grad_terms<K, FromOutput>(dy[i], s[i], t, alpha, a, b, ToWide<T>{});
      });
}

// ---- element-wise terms ------------------------------------------------------
// The element-wise kernels fold the mean's low part (and, backward, the mean
// of dy) into one per-channel constant, computed in float64 and rounded once:
//   y  = (x - hi) * scale + offset,        offset = shift - lo * scale;
//   dx = dy * g - (x - hi) * bg - k,       bg = b * g, k = (a - lo * b) * g;
// the same values as ((x - hi) - lo) * scale + shift and
// (dy - a - ((x - hi) - lo) * b) * g up to rounding, with x - hi rounded once,
// and one or two fewer coefficients per element, which the (N, C) rows read
// beside the data (with the interleaved table below, about 15% of the
// (256, 1024) forward and 12% of forward+backward).
// x - hi is computed as x * 0.5 - hi * 0.5 and scaled back by a doubled
// coefficient: the same rounded value (halving is exact above the subnormal
// range; the multiply-subtract is one instruction, or fused, at every level),
// but finite where x and hi lie near opposite ends of the float32 range,
// whose plain difference overflows to infinity.
// The backward computes in float64 whatever the data type: g = w * invstd
// reaches 1 / sqrt(eps) (300 for eps 1e-5) when a channel's variance is far
// below eps, and float32 terms of that size lose the digits of a dx near 0
// (docs/numerics.md); the kernel stays memory-bound.
enum ForwardTerm { kHalfHi, kTwiceScale, kOffset, kForwardTerms };
enum BackwardTerm { kG, kTwiceBg, kK, kBackwardTerms };

// The coefficient tensors of this backend hold planes of c doubles: forward
// hi | lo | scale | shift, backward a | b | g. Every per-channel loop over
// them is then a contiguous sweep that vectorises; with one record per
// channel, building the terms of 1024 channels took longer than normalising
// a 1024-wide row. The layout is the backend's own: the tensors pass only
// between its kernels.
struct ForwardCoef {
  ForwardCoef(const double* coef, std::int64_t c) : hi(coef), lo(coef + c), scale(coef + 2 * c), shift(coef + 3 * c) {}
  const double* hi;
  const double* lo;
  const double* scale;
  const double* shift;
};

struct BackwardCoef {
  BackwardCoef(const double* coef_b, std::int64_t c) : a(coef_b), b(coef_b + c), g(coef_b + 2 * c) {}
  const double* a;
  const double* b;
  const double* g;
};

// Term Q of channel j (Q is a compile-time constant, so that a loop over
// channels computing one term vectorises).
template <class T, int Q>
T forward_term(const ForwardCoef& f, std::int64_t j) {
  if constexpr (Q == kHalfHi) return static_cast<T>(f.hi[j] * 0.5);
  else if constexpr (Q == kTwiceScale) return static_cast<T>(f.scale[j] * 2.0);
  else return static_cast<T>(f.shift[j] - f.lo[j] * f.scale[j]);
}

// From y (the in-place mode) the kernel reads u = z - shift = (x - mean) *
// scale, exact of the mean's split: dx = dz * g - u * (b * g / scale) - a * g,
// in the same three slots.
template <int Q, bool FromOutput = false>
double backward_term(const ForwardCoef& f, const BackwardCoef& bc, std::int64_t j) {
  if constexpr (FromOutput) {
    if constexpr (Q == kG) return bc.g[j];
    else if constexpr (Q == kTwiceBg) return bc.b[j] * bc.g[j] / f.scale[j];
    else return bc.a[j] * bc.g[j];
  } else {
    if constexpr (Q == kG) return bc.g[j];
    else if constexpr (Q == kTwiceBg) return 2.0 * bc.b[j] * bc.g[j];
    else return (bc.a[j] - f.lo[j] * bc.b[j]) * bc.g[j];
  }
}

template <class T>
std::array<T, kForwardTerms> forward_terms(const ForwardCoef& f, std::int64_t j) {
  return {forward_term<T, kHalfHi>(f, j), forward_term<T, kTwiceScale>(f, j), forward_term<T, kOffset>(f, j)};
}

template <bool FromOutput = false>
std::array<double, kBackwardTerms> backward_terms(const ForwardCoef& f, const BackwardCoef& bc, std::int64_t j) {
  return {backward_term<kG, FromOutput>(f, bc, j), backward_term<kTwiceBg, FromOutput>(f, bc, j),
          backward_term<kK, FromOutput>(f, bc, j)};
}

// Channel j's ChannelTerms in T (float64 for V = double).
template <class T>
ChannelTerms<T> channel_terms(const ForwardCoef& f, std::int64_t j) {
  return {static_cast<T>(f.hi[j]),          static_cast<T>(f.lo[j]),
          forward_term<T, kHalfHi>(f, j),   forward_term<T, kTwiceScale>(f, j),
          forward_term<T, kOffset>(f, j),   static_cast<T>(f.shift[j])};
}

// Every channel's K terms, interleaved by vector: the terms of channels
// [v * lanes, (v + 1) * lanes) fill K consecutive vectors, so a row sweep
// reads one coefficient stream rather than K arrays beside its data rows
// (measured 5-10% faster than K arrays for (256, 1024), and less sensitive
// to where the arrays fall relative to the rows).
// T is the data's type, which sets how many channels a vector covers; U the
// terms' (float64 for the backward).
template <class T, int K, class U = T>
class TermTable {
 public:
  // term(j, std::integral_constant<int, Q>) -> U: term Q of channel j.
  template <class Term>
  TermTable(std::int64_t c, Term&& term)
      : data_(std::make_unique_for_overwrite<U[]>(static_cast<std::size_t>((c + kLanes<T> - 1) / kLanes<T> * K * kLanes<T>))) {
    // One term at a time over a whole vector of channels, so that each
    // inner loop reads the coefficient planes contiguously and vectorises.
    // Lanes past the last channel stay unset: only whole vectors of channels
    // are read as vectors, the rest through at().
    const std::int64_t full = c / kLanes<T> * kLanes<T>;
    [&]<int... Q>(std::integer_sequence<int, Q...>) {
      (fill(full, c, [&](std::int64_t j) { return term(j, std::integral_constant<int, Q>{}); }, Q), ...);
    }(std::make_integer_sequence<int, K>{});
  }
  // The K vectors of terms of the channels [j, j + lanes); j is a multiple
  // of the lane count, and the next channels' terms follow.
  const U* vectors(std::int64_t j) const { return data_.get() + j * K; }
  U at(std::int64_t j, int q) const { return data_[index(j, q)]; }

 private:
  template <class One>
  void fill(std::int64_t full, std::int64_t c, One&& one, int q) {
    for (std::int64_t j0 = 0; j0 < full; j0 += kLanes<T>) {
      U* out = data_.get() + j0 * K + q * kLanes<T>;
      for (std::int64_t lane = 0; lane < kLanes<T>; ++lane) out[lane] = one(j0 + lane);
    }
    for (std::int64_t j = full; j < c; ++j) data_[index(j, q)] = one(j);
  }

  static std::size_t index(std::int64_t j, int q) {
    return static_cast<std::size_t>(j / kLanes<T> * K * kLanes<T> + q * kLanes<T> + j % kLanes<T>);
  }
  std::unique_ptr<U[]> data_;
};

template <class T>
using ForwardTable = TermTable<T, kForwardTerms>;
template <class T>
using BackwardTable = TermTable<T, kBackwardTerms, double>;

// y = act((x - hi) * scale + offset) over a run of one channel; y may be x
// (the in-place mode: each element is read before it is written).
template <ActivationKind K, class T>
void normalize_run(const T* x, T* y, std::int64_t len, const std::array<T, kForwardTerms>& t, T alpha) {
  // Explicit vectors: with the activation's compare the plain loop stayed
  // scalar, and without it the compiler's own vector loop was slower too
  // (64x256x14x14: 0.56-0.84 ms against 0.41-0.48).
  const T half_hi = t[kHalfHi], twice_scale = t[kTwiceScale], offset = t[kOffset];
  constexpr std::int64_t lanes = kLanes<T>;
  const Vec<T> vh = splat(half_hi), vs = splat(twice_scale), vo = splat(offset);
  std::int64_t i = 0;
  for (; i + lanes <= len; i += lanes)
    store<T>(y + i, Act<K>::forward((load(x + i) * splat(T(0.5)) - vh) * vs + vo, alpha));
  for (; i < len; ++i) y[i] = Act<K>::forward((x[i] * T(0.5) - half_hi) * twice_scale + offset, alpha);
}

// dx = dy * g - (x - hi) * bg - k over a run of one channel: the halved
// x - hi in T (one rounding, relative to the difference itself), the rest in
// float64.
// dx = dz * g - d * twice_bg - k over a run of one channel, in explicit
// vectors (with a compare in it, the plain loop stayed scalar).
template <ActivationKind K, bool FromOutput, class T>
void backward_run(const T* __restrict dy, const T* __restrict s, T* __restrict dx, std::int64_t len,
                  const ChannelTerms<T>& c, T alpha, const std::array<double, kBackwardTerms>& t) {
  constexpr std::int64_t lanes = kLanes<T>;
  const VectorTerms<T> vc = splat_terms(c);
  const WideVec<T> g = WideVec<T>{} + t[kG], twice_bg = WideVec<T>{} + t[kTwiceBg], k = WideVec<T>{} + t[kK];
  std::int64_t i = 0;
  for (; i + lanes <= len; i += lanes) {
    Vec<T> dz, d;
    fused_grad<K, FromOutput, true>(load(dy + i), load(s + i), vc, alpha, dz, d);
    store<T>(dx + i, narrow<T>((widen<T>(dz) * g - k) - widen<T>(d) * twice_bg));
  }
  for (; i < len; ++i) {
    T dz, d;
    fused_grad<K, FromOutput, true>(dy[i], s[i], c, alpha, dz, d);
    dx[i] = static_cast<T>((static_cast<double>(dz) * t[kG] - t[kK]) - static_cast<double>(d) * t[kTwiceBg]);
  }
}

// The same over channels [j0, j0 + len) of an (N, C) row; j0 is a multiple
// of the lane count.
template <ActivationKind K, class T>
void row_normalize(const T* x, T* y, std::int64_t j0, std::int64_t len, const ForwardTable<T>& t, T alpha) {
  constexpr std::int64_t lanes = kLanes<T>;
  const T* q = t.vectors(j0);
  std::int64_t j = 0;
  for (; j + lanes <= len; j += lanes, q += kForwardTerms * lanes)
    store<T>(y + j, Act<K>::forward((load(x + j) * splat(T(0.5)) - load(q + kHalfHi * lanes)) *
                                            load(q + kTwiceScale * lanes) +
                                        load(q + kOffset * lanes),
                                    alpha));
  for (; j < len; ++j)
    y[j] = Act<K>::forward((x[j] * T(0.5) - t.at(j0 + j, kHalfHi)) * t.at(j0 + j, kTwiceScale) + t.at(j0 + j, kOffset),
                           alpha);
}

// The same over channels [j0, j0 + len) of an (N, C) row; half_hi holds
// every channel's mean_hi / 2 in T. Converting the difference rather than x
// and hi, and three float64 terms rather than four, measured 20% faster than
// the direct form.
// Fused as backward_run; `c` holds every channel's terms in T.
template <ActivationKind K, bool FromOutput, class T>
void row_backward(const T* __restrict dy, const T* __restrict s, T* __restrict dx, std::int64_t j0, std::int64_t len,
                  const ChannelTerms<const T*>& c, T alpha, const BackwardTable<T>& t) {
  constexpr std::int64_t lanes = kLanes<T>;
  const double* q = t.vectors(j0);
  // The channels' terms at channel `at`, as a vector or a scalar.
  auto terms = [&](auto dyv, auto sv, std::int64_t at, auto& dz, auto& d) {
    using V = std::remove_cvref_t<decltype(dz)>;
    if constexpr (!kIsVector<V>) {
      const ChannelTerms<T> one{c.hi[at], c.lo[at], c.half_hi[at], c.twice_scale[at], c.offset[at], c.shift[at]};
      fused_grad<K, FromOutput, true>(dyv, sv, one, alpha, dz, d);
    } else {
      const VectorTerms<T> vec{load(c.hi + at),          load(c.lo + at),     load(c.half_hi + at),
                               load(c.twice_scale + at), load(c.offset + at), load(c.shift + at)};
      fused_grad<K, FromOutput, true>(dyv, sv, vec, alpha, dz, d);
    }
  };
  std::int64_t j = 0;
  for (; j + lanes <= len; j += lanes, q += kBackwardTerms * lanes) {
    Vec<T> dz, d;
    terms(load(dy + j), load(s + j), j0 + j, dz, d);
    store<T>(dx + j, narrow<T>((widen<T>(dz) * load_wide<T>(q + kG * lanes) - load_wide<T>(q + kK * lanes)) -
                               widen<T>(d) * load_wide<T>(q + kTwiceBg * lanes)));
  }
  for (; j < len; ++j) {
    const std::int64_t at = j0 + j;
    T dz, d;
    terms(dy[j], s[j], at, dz, d);
    dx[j] = static_cast<T>((static_cast<double>(dz) * t.at(at, kG) - t.at(at, kK)) -
                           static_cast<double>(d) * t.at(at, kTwiceBg));
  }
}

// (N, C) rows of 16-bit inputs staged as float32, added into float64 sums.
template <class T>
void row_shifted_sums(const T* __restrict row, const T* __restrict shift, double* __restrict s, double* __restrict ss,
                      std::int64_t c) {
  for (std::int64_t j = 0; j < c; ++j) {
    const double d = static_cast<double>(row[j]) - static_cast<double>(shift[j]);
    s[j] += d;
    ss[j] += d * d;
  }
}

template <ActivationKind K, bool FromOutput, class T>
void row_gradient_sums(const T* __restrict dy, const T* __restrict x, std::int64_t c, const ChannelTerms<const T*>& t,
                       T alpha, double* __restrict s, double* __restrict sx) {
  for (std::int64_t j = 0; j < c; ++j)
    add_grad_terms<K, FromOutput>(
        dy[j], x[j], ChannelTerms<T>{t.hi[j], t.lo[j], t.half_hi[j], t.twice_scale[j], t.offset[j], t.shift[j]}, alpha,
        s[j], sx[j], ToWide<T>{});
}

// Every channel's ChannelTerms as six T arrays, converted once from the
// forward coefficients for the (N, C) kernels, which revisit every channel
// per tile or row.
template <class T>
class ChannelColumns {
 public:
  ChannelColumns(const double* coef, std::int64_t c)
      : c_(c), data_(std::make_unique_for_overwrite<T[]>(static_cast<std::size_t>(6 * c))) {
    const ForwardCoef f(coef, c);
    fill(0, [&](std::int64_t j) { return static_cast<T>(f.hi[j]); });
    fill(1, [&](std::int64_t j) { return static_cast<T>(f.lo[j]); });
    fill(2, [&](std::int64_t j) { return forward_term<T, kHalfHi>(f, j); });
    fill(3, [&](std::int64_t j) { return forward_term<T, kTwiceScale>(f, j); });
    fill(4, [&](std::int64_t j) { return forward_term<T, kOffset>(f, j); });
    fill(5, [&](std::int64_t j) { return static_cast<T>(f.shift[j]); });
  }
  const T* hi() const { return plane(0); }
  const T* lo() const { return plane(1); }
  ChannelTerms<const T*> planes() const { return {plane(0), plane(1), plane(2), plane(3), plane(4), plane(5)}; }
  // The terms of the channel vector starting at j.
  VectorTerms<T> vectors(std::int64_t j) const {
    return {load(plane(0) + j), load(plane(1) + j), load(plane(2) + j),
            load(plane(3) + j), load(plane(4) + j), load(plane(5) + j)};
  }
  ChannelTerms<T> at(std::int64_t j) const {
    return {plane(0)[j], plane(1)[j], plane(2)[j], plane(3)[j], plane(4)[j], plane(5)[j]};
  }

 private:
  template <class One>
  void fill(int q, One&& one) {
    T* out = data_.get() + q * c_;
    for (std::int64_t j = 0; j < c_; ++j) out[j] = one(j);
  }
  const T* plane(int q) const { return data_.get() + q * c_; }
  std::int64_t c_;
  std::unique_ptr<T[]> data_;
};

// Reductions over (N, C) input, in column blocks of V vectors of channels
// whose accumulators stay in registers while the loop walks a tile of rows
// (row-wise accumulation re-read and re-wrote per-channel arrays each row and
// stalled on 4 KiB aliasing). Tiles of 4 rows, each swept by 4-vector blocks
// across the whole row, keep the reads close to sequential (4 streams the
// prefetchers follow) and give 8 independent add chains; a block walking
// 32 rows 4 KiB apart before moving on ran 1.5x slower for (256, 1024). The
// float64 partials live in per-channel arrays between tiles. Each channel
// adds its rows in order whatever its block, so the sums do not depend on
// the blocking.
// Rows per tile. Rows of 1 KiB to 4 KiB (channels-last input of 256 to
// 1023 float32 channels, Note [Channel layouts] in core/batch_norm.cpp) take
// tiles of 32 rows, whose partials are loaded and stored once per 32 rows
// rather than per 4: 64x256x14x14 channels-last (rows of 1 KiB) took
// 1.14-1.19x its channels-first time with 4-row tiles and 1.04x with 32;
// rows of 256 B were best with 4 (1.04x against 1.13-1.17x with 32), and
// (256, 1024) keeps the 4 it was tuned with.
std::int64_t tile_rows(std::int64_t row_bytes) { return row_bytes >= 1024 && row_bytes < 4096 ? 32 : 4; }
constexpr int kWideBlock = 4;  // vectors per block

// The first tile starts its accumulators (float64 lanes of T vectors) at
// zero, the others from the partials (no separate clearing pass over them).
template <class T, int V, class Body>
void column_blocks(std::int64_t n, std::int64_t j0, std::int64_t j1, std::int64_t tile, double* ps, double* pss,
                   Body&& body) {
  constexpr std::int64_t lanes = kLanes<T>;
  for (std::int64_t i0 = 0; i0 < n; i0 += tile) {
    const std::int64_t i1 = std::min(n, i0 + tile);
    for (std::int64_t j = j0; j + V * lanes <= j1; j += V * lanes) {
      WideVec<T> a[V], b[V];
      for (int v = 0; v < V; ++v) {
        a[v] = i0 == 0 ? WideVec<T>{} : load_wide<T>(ps + j + v * lanes);
        b[v] = i0 == 0 ? WideVec<T>{} : load_wide<T>(pss + j + v * lanes);
      }
      for (std::int64_t i = i0; i < i1; ++i)
        for (int v = 0; v < V; ++v) body(i, j + v * lanes, a[v], b[v]);
      for (int v = 0; v < V; ++v) {
        store_wide<T>(ps + j + v * lanes, a[v]);
        store_wide<T>(pss + j + v * lanes, b[v]);
      }
    }
  }
}

// Runs body(i, j, a, b) over every full vector of channels of an (N, C)
// input: 4-vector blocks, then 1-vector blocks for what is left, and adds
// the sums to s and ss; returns the number of channels covered (the caller
// sums the rest in float64).
template <class T, class Body>
std::int64_t column_vectors(std::int64_t n, std::int64_t c, double* s, double* ss, Body&& body) {
  constexpr std::int64_t lanes = kLanes<T>, wide = kWideBlock * lanes;
  const std::int64_t wide_end = c / wide * wide, end = c / lanes * lanes;
  const auto partials = std::make_unique_for_overwrite<double[]>(static_cast<std::size_t>(2 * end));
  double* ps = partials.get();
  double* pss = ps + end;
  const std::int64_t tile = tile_rows(c * static_cast<std::int64_t>(sizeof(T)));
  column_blocks<T, kWideBlock>(n, 0, wide_end, tile, ps, pss, body);
  column_blocks<T, 1>(n, wide_end, end, tile, ps, pss, body);
  if (n > 0) {
    for (std::int64_t j = 0; j < end; ++j) {
      s[j] += ps[j];
      ss[j] += pss[j];
    }
  }
  return end;
}

// s[j] += sum over rows of (x - shift[j]), ss[j] += its square, in float64
// lanes (Note [Moments in float64]).
template <class T>
std::int64_t column_shifted_sums(const T* x, std::int64_t n, std::int64_t c, const T* shift, double* s, double* ss) {
  return column_vectors<T>(n, c, s, ss, [&](std::int64_t i, std::int64_t j, WideVec<T>& a, WideVec<T>& b) {
    const WideVec<T> d = widen<T>(load(x + i * c + j)) - widen<T>(load(shift + j));
    a += d;
    b += d * d;
  });
}

// The same over dy and x (or y): s[j] += sum(dz), sx[j] += sum(dz * u)
// (fused_grad; plain batch norm: dz = dy, u = (x - hi) - lo), in float64
// lanes (Note [Gradient sums in float64]).
template <ActivationKind K, bool FromOutput, class T>
std::int64_t column_gradient_sums(const T* dy, const T* x, std::int64_t n, std::int64_t c,
                                  const ChannelColumns<T>& cols, T alpha, double* s, double* sx) {
  return column_vectors<T>(n, c, s, sx, [&](std::int64_t i, std::int64_t j, WideVec<T>& a, WideVec<T>& b) {
    add_grad_terms<K, FromOutput>(load(dy + i * c + j), load(x + i * c + j), cols.vectors(j), alpha, a, b,
                                  ToWide<T>{});
  });
}

// Calls fn(T{}) with T = float (float32 and 16-bit inputs) or double.
template <class Fn>
void dispatch_compute(DType dtype, Fn&& fn) {
  // The entry points (core/batch_norm.cpp) admit float32, float64 and the
  // 16-bit types, which compute in float32.
  if (dtype == DType::Float64) fn(double{});
  else fn(float{});
}

// ---- channels that overflow float32 ------------------------------------------
// The float32 sums overflow where values approach the float32 range (squares
// of differences past 1.8e19, products of dy and x - mean past 3.4e38) while
// float64 holds them. The fast kernels leave such a channel's sums infinite
// or NaN; the kernels below then redo that channel in float64, so that finite
// input gives the float64 result (NaN or infinite input still gives NaN).
// The check is one comparison per channel; the redo runs only for channels
// that need it.

// Channel j of an (N, C, L) tensor as float64 values, in sample order.
template <class T>
std::vector<double> channel_values(const void* x, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l,
                                   std::int64_t j) {
  std::vector<double> values;
  values.reserve(static_cast<std::size_t>(n * l));
  for (std::int64_t i = 0; i < n; ++i)
    for_runs<T>(x, dtype, (i * c + j) * l, l, [&](const T* p, std::int64_t len) { values.insert(values.end(), p, p + len); });
  return values;
}

// mean and m2 of every channel whose fast sums are not finite, in two
// float64 passes.
template <class T>
void redo_overflowed_stats(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x, double* mean,
                           double* m2) {
  for (std::int64_t j = 0; j < c; ++j) {
    if (std::isfinite(mean[j]) && std::isfinite(m2[j])) continue;
    const std::vector<double> v = channel_values<T>(x, dtype, n, c, l, j);
    double sum = 0;
    for (const double e : v) sum += e;
    const double mu = sum / static_cast<double>(v.size());
    double sq = 0;
    for (const double e : v) sq += (e - mu) * (e - mu);
    mean[j] = mu;
    m2[j] = sq;
  }
}

// sum(dz) and sum(dz * u) of every channel whose fast sums are not finite,
// in float64.
template <ActivationKind K, bool FromOutput, class T>
void redo_overflowed_gradient_sums(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                                   const void* x, const double* coef, double alpha, double* sum_dy,
                                   double* sum_dy_xmu) {
  const ForwardCoef f(coef, c);
  for (std::int64_t j = 0; j < c; ++j) {
    if (std::isfinite(sum_dy[j]) && std::isfinite(sum_dy_xmu[j])) continue;
    const std::vector<double> g = channel_values<T>(dy, dtype, n, c, l, j);
    const std::vector<double> v = channel_values<T>(x, dtype, n, c, l, j);
    const ChannelTerms<double> terms{f.hi[j], f.lo[j], f.hi[j] * 0.5, f.scale[j] * 2.0, f.shift[j] - f.lo[j] * f.scale[j],
                                     f.shift[j]};
    double s = 0, sx = 0;
    for (std::size_t k = 0; k < v.size(); ++k) {
      double dz, u;
      fused_grad<K, FromOutput>(g[k], v[k], terms, alpha, dz, u);
      s += dz;
      sx += dz * u;
    }
    sum_dy[j] = s;
    sum_dy_xmu[j] = sx;
  }
}

// ---- kernels ----------------------------------------------------------------------

void cpu_stats(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               double* mean, double* m2) {
  const std::int64_t count = n * l;
  if (count == 0) {
    std::fill(mean, mean + c, 0.0);
    std::fill(m2, m2 + c, 0.0);
    return;
  }
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    std::vector<double> s(static_cast<std::size_t>(c), 0.0), ss(static_cast<std::size_t>(c), 0.0);
    std::vector<T> shift(static_cast<std::size_t>(c));
    const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
    for (std::int64_t j = 0; j < c; ++j) {
      auto& first = shift[static_cast<std::size_t>(j)];
      if (direct) first = static_cast<const T*>(x)[j * l];
      else for_runs<T>(x, dtype, j * l, 1, [&](const T* p, std::int64_t) { first = p[0]; });
    }
    if (l == 1 && direct) {
      const std::int64_t done = column_shifted_sums<T>(static_cast<const T*>(x), n, c, shift.data(), s.data(), ss.data());
      for (std::int64_t j = done; j < c; ++j)
        for (std::int64_t i = 0; i < n; ++i) {
          const double d = static_cast<double>(static_cast<const T*>(x)[i * c + j]) -
                           static_cast<double>(shift[static_cast<std::size_t>(j)]);
          s[static_cast<std::size_t>(j)] += d;
          ss[static_cast<std::size_t>(j)] += d * d;
        }
    } else if (l == 1) {
      // (N, C) with 16-bit input: rows staged as float32, added row by row
      // into the float64 sums.
      for (std::int64_t i = 0; i < n; ++i) {
        // A row wider than the staging chunk arrives in pieces.
        std::int64_t done = 0;
        for_runs<T>(x, dtype, i * c, c, [&](const T* row, std::int64_t len) {
          row_shifted_sums(row, shift.data() + done, s.data() + done, ss.data() + done, len);
          done += len;
        });
      }
    } else {
      // One accumulator set per channel, the tensor read in memory order: a
      // channel-by-channel walk reads runs of l values a sample apart, which
      // ran at two thirds of the sequential read rate (32x64x56x56). Each
      // channel still adds its runs in sample order, so the sums are the same.
      std::vector<PairSums<T>> sums(static_cast<std::size_t>(c));
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j)
          for_runs<T>(x, dtype, (i * c + j) * l, l, [&](const T* p, std::int64_t len) {
            shifted_sums<T>(p, len, shift[static_cast<std::size_t>(j)], sums[static_cast<std::size_t>(j)]);
          });
      for (std::int64_t j = 0; j < c; ++j) {
        auto& sum = sums[static_cast<std::size_t>(j)];
        sum.flush();
        s[static_cast<std::size_t>(j)] = sum.a;
        ss[static_cast<std::size_t>(j)] = sum.b;
      }
    }
    const double per = 1.0 / static_cast<double>(count);  // one division, not one per channel
    for (std::int64_t j = 0; j < c; ++j) {
      const auto u = static_cast<std::size_t>(j);
      const double local = s[u] * per;
      mean[j] = static_cast<double>(shift[u]) + local;
      // Rounding can leave a constant channel's m2 slightly below 0; a NaN
      // stays NaN (std::max(0.0, m2) would turn it into 0).
      const double v = ss[u] - s[u] * local;
      m2[j] = v < 0 ? 0.0 : v;
    }
    redo_overflowed_stats<T>(dtype, n, c, l, x, mean, m2);
  });
}

void cpu_merge_stats(Device /*device*/, std::int64_t c, int parts, const std::int64_t* counts,
                     const double* const* means, const double* const* m2s, double* mean, double* m2) {
  // Chan's update, part by part in replica order. The weights depend on the
  // counts only (the same for every channel), so they are computed once per
  // part and the channel loops vectorise; this runs on the master while the
  // other replicas wait.
  // The first non-empty part is read in place until the first merge writes
  // the result (no copy of it).
  const double* cur_mean = nullptr;
  const double* cur_m2 = nullptr;
  double na = 0;
  for (int p = 0; p < parts; ++p) {
    if (counts[p] == 0) continue;
    const auto nb = static_cast<double>(counts[p]);
    const double* mb = means[p];
    const double* m2b = m2s[p];
    if (na == 0) {
      cur_mean = mb;
      cur_m2 = m2b;
      na = nb;
      continue;
    }
    const double total = na + nb;
    const double w_mean = nb / total, w_m2 = na * nb / total;
    for (std::int64_t j = 0; j < c; ++j) {
      const double delta = mb[j] - cur_mean[j];
      mean[j] = cur_mean[j] + delta * w_mean;
      m2[j] = cur_m2[j] + (m2b[j] + delta * delta * w_m2);
    }
    cur_mean = mean;
    cur_m2 = m2;
    na = total;
  }
  if (na == 0) {
    std::fill(mean, mean + c, 0.0);
    std::fill(m2, m2 + c, 0.0);
  } else if (cur_mean != mean) {  // one non-empty part
    std::copy(cur_mean, cur_mean + c, mean);
    std::copy(cur_m2, cur_m2 + c, m2);
  }
}

void cpu_finalize(Device /*device*/, std::int64_t c, std::int64_t count, const double* m2, double eps, bool eps_clamp,
                  double* invstd, double* unbiased_var) {
  // Reciprocals of the counts once: this runs on the master while the other
  // replicas wait, and three float64 divisions per channel were most of it
  // (the results differ from divisions by at most an ulp of float64).
  const double per = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
  const double per_unbiased = count > 1 ? 1.0 / static_cast<double>(count - 1) : 0.0;
  for (std::int64_t j = 0; j < c; ++j) {
    const double var = m2[j] * per;
    invstd[j] = 1.0 / std::sqrt(eps_clamp ? std::max(var, eps) : var + eps);
    unbiased_var[j] = m2[j] * per_unbiased;
  }
}

void cpu_update_running(Device /*device*/, DType param_dtype, std::int64_t c, double momentum, const double* mean,
                        const double* unbiased_var, void* running_mean, void* running_var,
                        std::int64_t* num_batches_tracked) {
  const std::int64_t batches = ++*num_batches_tracked;
  const double factor = momentum < 0 ? 1.0 / static_cast<double>(batches) : momentum;
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    auto* rm = static_cast<P*>(running_mean);
    auto* rv = static_cast<P*>(running_var);
    // Factor 1 (momentum 1, or the first batch of a cumulative average) takes
    // the batch's value: an infinite old value times 1 - factor = 0 is NaN.
    const bool replace = factor == 1.0;
    for (std::int64_t j = 0; j < c; ++j) {
      rm[j] = static_cast<P>(replace ? mean[j] : (1.0 - factor) * static_cast<double>(rm[j]) + factor * mean[j]);
      rv[j] = static_cast<P>(replace ? unbiased_var[j]
                                     : (1.0 - factor) * static_cast<double>(rv[j]) + factor * unbiased_var[j]);
    }
  });
}

void cpu_renorm_factors(Device /*device*/, DType param_dtype, std::int64_t c, const double* mean, const double* invstd,
                        const void* running_mean, const void* running_var, double eps, bool eps_clamp, double rmax,
                        double dmax, double* r, double* d) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* rm = static_cast<const P*>(running_mean);
    const auto* rv = static_cast<const P*>(running_var);
    for (std::int64_t j = 0; j < c; ++j) {
      // The running standard deviation as eval mode would use it.
      const double var = static_cast<double>(rv[j]);
      const double sigma = std::sqrt(eps_clamp ? std::max(var, eps) : var + eps);
      r[j] = std::clamp(1.0 / (invstd[j] * sigma), 1.0 / rmax, rmax);
      d[j] = std::clamp((mean[j] - static_cast<double>(rm[j])) / sigma, -dmax, dmax);
    }
  });
}

void cpu_forward_coefficients(Device /*device*/, DType param_dtype, std::int64_t c, const double* mean,
                              const double* invstd, const void* weight, const void* bias, double* coef) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* w = static_cast<const P*>(weight);
    const auto* b = static_cast<const P*>(bias);
    double* hi = coef;
    double* lo = coef + c;
    double* scale = coef + 2 * c;
    double* shift = coef + 3 * c;
    for (std::int64_t j = 0; j < c; ++j) {
      // The hi/lo split rounds to the precision the apply kernel computes in.
      hi[j] = static_cast<double>(static_cast<P>(mean[j]));
      lo[j] = static_cast<double>(static_cast<P>(mean[j] - hi[j]));
    }
    for (std::int64_t j = 0; j < c; ++j) scale[j] = invstd[j] * (w != nullptr ? static_cast<double>(w[j]) : 1.0);
    for (std::int64_t j = 0; j < c; ++j) shift[j] = b != nullptr ? static_cast<double>(b[j]) : 0.0;
  });
}

void apply_kernel(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               const double* coef, const BatchNormFusion& fusion, void* y) {
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_fusion(fusion, [&](auto kind, auto) {
      constexpr ActivationKind K = decltype(kind)::value;
      const T alpha = static_cast<T>(fusion.alpha);
      const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
      std::vector<T> out_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
      // Writes a computed run: in place for float32/float64, converted otherwise.
      auto out_run = [&](std::int64_t offset, std::int64_t len, auto&& compute) {
        if (direct) {
          compute(static_cast<T*>(y) + offset);
        } else {
          compute(out_buffer.data());
          from_float(y, dtype, offset, reinterpret_cast<const float*>(out_buffer.data()), len);
        }
      };
      if (l == 1) {
        // Element-wise work streams row by row (the coefficient table stays in
        // L1); measured faster than column blocks, which suit the reductions.
        const ForwardCoef f(coef, c);
        const ForwardTable<T> table(c, [&](std::int64_t j, auto q) { return forward_term<T, decltype(q)::value>(f, j); });
        for (std::int64_t i = 0; i < n; ++i) {
          if (direct) {
            row_normalize<K>(static_cast<const T*>(x) + i * c, static_cast<T*>(y) + i * c, 0, c, table, alpha);
            continue;
          }
          std::int64_t done = 0;
          for_runs<T>(x, dtype, i * c, c, [&](const T* row, std::int64_t len) {
            out_run(i * c + done, len, [&](T* out) { row_normalize<K>(row, out, done, len, table, alpha); });
            done += len;
          });
        }
        return;
      }
      const ForwardCoef f(coef, c);
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j) {
          const auto terms = forward_terms<T>(f, j);
          std::int64_t done = 0;
          const std::int64_t base = (i * c + j) * l;
          for_runs<T>(x, dtype, base, l, [&](const T* p, std::int64_t len) {
            out_run(base + done, len, [&](T* out) { normalize_run<K, T>(p, out, len, terms, alpha); });
            done += len;
          });
        }
    });
  });
}

// sum(dz * (x - mean)) from sum(dz * x), which add_grad_terms accumulates
// from x (the mean in float64 as hi + lo); before the redo of channels
// whose sums are not finite, which computes the centred sum itself.
template <bool FromOutput>
void center_gradient_sums(std::int64_t c, const double* coef, const double* sum_dy, double* sum_dy_xmu) {
  if constexpr (!FromOutput) {
    const ForwardCoef f(coef, c);
    for (std::int64_t j = 0; j < c; ++j) sum_dy_xmu[j] -= (f.hi[j] + f.lo[j]) * sum_dy[j];
  }
}

// The fast sums of cpu_backward_reduce (float64 lanes and partials for every
// dtype, Note [Gradient sums in float64]).
template <ActivationKind K, bool FromOutput, class T>
void fast_gradient_sums(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy, const void* x,
                        const double* coef, T alpha, double* sum_dy, double* sum_dy_xmu) {
  std::fill(sum_dy, sum_dy + c, 0.0);
  std::fill(sum_dy_xmu, sum_dy_xmu + c, 0.0);
  const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
  std::vector<T> g_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
  // Calls fn(dy_run, x_run, len) over matching runs of dy and x.
  auto both = [&](std::int64_t offset, std::int64_t len, auto&& fn) {
    if (direct) {
      fn(static_cast<const T*>(dy) + offset, static_cast<const T*>(x) + offset, len);
      return;
    }
    std::int64_t done = 0;
    for_runs<T>(x, dtype, offset, len, [&](const T* xp, std::int64_t run) {
      to_float(reinterpret_cast<float*>(g_buffer.data()), dy, dtype, offset + done, run);
      fn(g_buffer.data(), xp, run);
      done += run;
    });
  };
  if (l == 1) {
    const ChannelColumns<T> cols(coef, c);
    if (direct) {
      const T* gs = static_cast<const T*>(dy);
      const T* xs = static_cast<const T*>(x);
      const std::int64_t done = column_gradient_sums<K, FromOutput>(gs, xs, n, c, cols, alpha, sum_dy, sum_dy_xmu);
      for (std::int64_t j = done; j < c; ++j) {
        const ChannelTerms<T> t = cols.at(j);
        for (std::int64_t i = 0; i < n; ++i)
          add_grad_terms<K, FromOutput>(gs[i * c + j], xs[i * c + j], t, alpha, sum_dy[j], sum_dy_xmu[j], ToWide<T>{});
      }
      return;
    }
    const ChannelTerms<const T*> planes = cols.planes();
    for (std::int64_t i = 0; i < n; ++i) {
      std::int64_t done = 0;
      both(i * c, c, [&](const T* g, const T* xp, std::int64_t len) {
        const ChannelTerms<const T*> at{planes.hi + done,          planes.lo + done,     planes.half_hi + done,
                                        planes.twice_scale + done, planes.offset + done, planes.shift + done};
        row_gradient_sums<K, FromOutput>(g, xp, len, at, alpha, sum_dy + done, sum_dy_xmu + done);
        done += len;
      });
    }
    return;
  }
  // In memory order with one accumulator set per channel, as in cpu_stats.
  std::vector<PairSums<T>> sums(static_cast<std::size_t>(c));
  const ForwardCoef f(coef, c);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const ChannelTerms<T> t = channel_terms<T>(f, j);
      auto& sum = sums[static_cast<std::size_t>(j)];
      both((i * c + j) * l, l, [&](const T* g, const T* xp, std::int64_t len) {
        gradient_sums<K, FromOutput>(g, xp, len, t, alpha, sum);
      });
    }
  for (std::int64_t j = 0; j < c; ++j) {
    auto& sum = sums[static_cast<std::size_t>(j)];
    sum.flush();
    sum_dy[j] = sum.a;
    sum_dy_xmu[j] = sum.b;
  }
}

void cpu_backward_reduce(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l,
                         const void* dy, const void* x, const double* coef, const BatchNormFusion& fusion,
                         double* sum_dy, double* sum_dy_xmu) {
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_fusion(fusion, [&](auto kind, auto from_output) {
      constexpr ActivationKind K = decltype(kind)::value;
      constexpr bool kFromOutput = decltype(from_output)::value;
      fast_gradient_sums<K, kFromOutput, T>(dtype, n, c, l, dy, x, coef, static_cast<T>(fusion.alpha), sum_dy,
                                            sum_dy_xmu);
      center_gradient_sums<kFromOutput>(c, coef, sum_dy, sum_dy_xmu);
      redo_overflowed_gradient_sums<K, kFromOutput, T>(dtype, n, c, l, dy, x, coef, fusion.alpha, sum_dy, sum_dy_xmu);
      if constexpr (kFromOutput) {
        // u = (x - mean) * scale (Note [Fused activation]).
        const ForwardCoef f(coef, c);
        for (std::int64_t j = 0; j < c; ++j) sum_dy_xmu[j] /= f.scale[j];
      }
    });
  });
}

void cpu_backward_coefficients(Device /*device*/, DType param_dtype, std::int64_t c, std::int64_t count,
                               double clamp_eps, const double* invstd, const void* weight, const double* sum_dy,
                               const double* sum_dy_xmu, double* coef_b) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    const auto* w = static_cast<const P*>(weight);
    // count 0: statistics were constants (eval mode), so no batch terms.
    const double per = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    double* a = coef_b;
    double* b = coef_b + c;
    double* g = coef_b + 2 * c;
    // In clamp mode a channel whose variance was clamped to eps has
    // invstd = 1 / sqrt(eps), computed the same way: no gradient flows
    // through its variance (b = 0).
    const double clamped_invstd = clamp_eps > 0 ? 1.0 / std::sqrt(clamp_eps) : HUGE_VAL;
    for (std::int64_t j = 0; j < c; ++j) {
      a[j] = sum_dy[j] * per;
      b[j] = invstd[j] >= clamped_invstd ? 0.0 : sum_dy_xmu[j] * per * invstd[j] * invstd[j];
    }
    for (std::int64_t j = 0; j < c; ++j) g[j] = invstd[j] * (w != nullptr ? static_cast<double>(w[j]) : 1.0);
  });
}

void cpu_accumulate_param_grads(Device /*device*/, DType param_dtype, std::int64_t c, const double* invstd,
                                const double* local_sum_dy, const double* local_sum_dy_xmu, void* grad_weight,
                                void* grad_bias) {
  core::detail::dispatch_floating(param_dtype, "batch_norm parameters", [&](auto tag) {
    using P = decltype(tag);
    auto* gw = static_cast<P*>(grad_weight);
    auto* gb = static_cast<P*>(grad_bias);
    if (gw != nullptr)
      for (std::int64_t j = 0; j < c; ++j) gw[j] = static_cast<P>(static_cast<double>(gw[j]) + local_sum_dy_xmu[j] * invstd[j]);
    if (gb != nullptr)
      for (std::int64_t j = 0; j < c; ++j) gb[j] = static_cast<P>(static_cast<double>(gb[j]) + local_sum_dy[j]);
  });
}

void backward_apply_kernel(Device /*device*/, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l,
                        const void* dy, const void* x, const double* coef, const double* coef_b,
                        const BatchNormFusion& fusion, void* dx) {
  dispatch_compute(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_fusion(fusion, [&](auto kind, auto from_output) {
      constexpr ActivationKind K = decltype(kind)::value;
      constexpr bool kFromOutput = decltype(from_output)::value;
      const T alpha = static_cast<T>(fusion.alpha);
      const bool direct = dtype == DType::Float32 || dtype == DType::Float64;
      std::vector<T> g_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
      std::vector<T> out_buffer(direct ? 0 : static_cast<std::size_t>(kChunk));
      // Calls fn(dy_run, x_run, dx_run, len) over matching runs.
      auto runs = [&](std::int64_t offset, std::int64_t len, auto&& fn) {
        if (direct) {
          fn(static_cast<const T*>(dy) + offset, static_cast<const T*>(x) + offset, static_cast<T*>(dx) + offset, len);
          return;
        }
        std::int64_t done = 0;
        for_runs<T>(x, dtype, offset, len, [&](const T* xp, std::int64_t run) {
          to_float(reinterpret_cast<float*>(g_buffer.data()), dy, dtype, offset + done, run);
          fn(g_buffer.data(), xp, out_buffer.data(), run);
          from_float(dx, dtype, offset + done, reinterpret_cast<const float*>(out_buffer.data()), run);
          done += run;
        });
      };
      const ForwardCoef f(coef, c);
      const BackwardCoef bc(coef_b, c);
      if (l == 1) {
        const BackwardTable<T> table(
            c, [&](std::int64_t j, auto q) { return backward_term<decltype(q)::value, kFromOutput>(f, bc, j); });
        const ChannelColumns<T> cols(coef, c);
        for (std::int64_t i = 0; i < n; ++i) {
          std::int64_t done = 0;
          runs(i * c, c, [&](const T* g, const T* xp, T* out, std::int64_t len) {
            row_backward<K, kFromOutput>(g, xp, out, done, len, cols.planes(), alpha, table);
            done += len;
          });
        }
        return;
      }
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j) {
          const auto terms = backward_terms<kFromOutput>(f, bc, j);
          const ChannelTerms<T> ct = channel_terms<T>(f, j);
          runs((i * c + j) * l, l, [&](const T* gp, const T* xp, T* out, std::int64_t len) {
            backward_run<K, kFromOutput, T>(gp, xp, out, len, ct, alpha, terms);
          });
        }
    });
  });
}

// Note [Folded rows]
// The element-wise kernels sweep (N, C) input a row at a time. Narrow rows
// (channels-last input of few channels: 32 float32 channels are 128 B) then
// spend their time restarting the sweep, so R consecutive rows are read as
// one row of R * C channels (at least 512 B, whole vector blocks) over
// coefficients repeated R times; the rows left over go through as they are.
// 8x32x16x32x32 channels-last forward+backward: 1.09-1.10x its
// channels-first time, against 1.13-1.14x row by row. (Folding the
// reductions as well, with the R results per channel merged, measured
// 1.5-1.7x slower: their column tiles already span many rows.)

// R for n rows of c elements of dtype (l == 1), or 0 to read them as they are.
std::int64_t fold_factor(std::int64_t n, std::int64_t c, std::int64_t l, DType dtype) {
  const auto size = static_cast<std::int64_t>(dtype_size(dtype));
  if (l != 1 || c <= 0 || c * size >= 512) return 0;
  constexpr std::int64_t kBlockChannels = 32;  // whole 4-vector blocks of float32 lanes, two of float64
  std::int64_t r = 1;
  while (r * c * size < 512 || (r * c) % kBlockChannels != 0) ++r;
  return n >= 2 * r ? r : 0;
}

// `planes` planes of c doubles, each repeated r times.
std::vector<double> repeat_planes(const double* coef, std::int64_t c, int planes, std::int64_t r) {
  std::vector<double> out(static_cast<std::size_t>(planes * r * c));
  for (int p = 0; p < planes; ++p)
    for (std::int64_t k = 0; k < r; ++k)
      std::copy(coef + p * c, coef + (p + 1) * c, out.begin() + (p * r + k) * c);
  return out;
}

const void* offset_rows(const void* p, DType dtype, std::int64_t elements) {
  return static_cast<const char*>(p) + elements * static_cast<std::int64_t>(dtype_size(dtype));
}
void* offset_rows(void* p, DType dtype, std::int64_t elements) {
  return static_cast<char*>(p) + elements * static_cast<std::int64_t>(dtype_size(dtype));
}

void cpu_apply(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* x,
               const double* coef, const BatchNormFusion& fusion, void* y) {
  const std::int64_t r = fold_factor(n, c, l, dtype);
  if (r == 0) {
    apply_kernel(device, dtype, n, c, l, x, coef, fusion, y);
    return;
  }
  const std::int64_t wide = n / r, done = wide * r * c;
  apply_kernel(device, dtype, wide, r * c, 1, x, repeat_planes(coef, c, 4, r).data(), fusion, y);
  apply_kernel(device, dtype, n - wide * r, c, 1, offset_rows(x, dtype, done), coef, fusion,
               offset_rows(y, dtype, done));
}

void cpu_backward_apply(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                        const void* x, const double* coef, const double* coef_b, const BatchNormFusion& fusion,
                        void* dx) {
  const std::int64_t r = fold_factor(n, c, l, dtype);
  if (r == 0) {
    backward_apply_kernel(device, dtype, n, c, l, dy, x, coef, coef_b, fusion, dx);
    return;
  }
  const std::int64_t wide = n / r, done = wide * r * c;
  backward_apply_kernel(device, dtype, wide, r * c, 1, dy, x, repeat_planes(coef, c, 4, r).data(),
                        repeat_planes(coef_b, c, 3, r).data(), fusion, dx);
  backward_apply_kernel(device, dtype, n - wide * r, c, 1, offset_rows(dy, dtype, done), offset_rows(x, dtype, done),
                        coef, coef_b, fusion, offset_rows(dx, dtype, done));
}

}  // namespace

const core::detail::BatchNormKernels kBatchNormKernels{
    cpu_stats,           cpu_merge_stats,           cpu_finalize,
    cpu_update_running,  cpu_renorm_factors,        cpu_forward_coefficients,  cpu_apply,
    cpu_backward_reduce, cpu_backward_coefficients, cpu_accumulate_param_grads,
    cpu_backward_apply};

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
