#pragma once
// The vector machinery of the CPU batch-norm kernels (cpu_batch_norm.cpp):
// 16-bit staging, float64-lane pair sums over runs, fused activations and
// their gradients, the per-channel terms of the element-wise kernels, row
// and column sweeps, the float64 redo of channels that overflow float32.
// Compiled within each CPU level's namespace: include it from a level file
// only, after cpu/isa.hpp.

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
#include "backend/kernels.hpp"
#include "cpu/half_float.hpp"
#include "cpu/scratch.hpp"
#include "cpu/simd.hpp"

namespace syncbn::cpu::SYNCBN_CPU_ISA {
namespace {

// ---- element types ----------------------------------------------------------

constexpr std::int64_t kChunk = 1024;  // staging chunk for 16-bit inputs; float32 flush period

inline void to_float(float* dst, const void* src, DType dtype, std::int64_t offset, std::int64_t n) {
  const auto* s = static_cast<const std::uint16_t*>(src) + offset;
  if (dtype == DType::Float16)
    for (std::int64_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]);
  else
    for (std::int64_t i = 0; i < n; ++i) dst[i] = bfloat16_to_float(s[i]);
}

inline void from_float(void* dst, DType dtype, std::int64_t offset, const float* src, std::int64_t n) {
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
constexpr int kAddsPerFlush = 32;  // adds per float32 lane before a float64 flush

// The lanes a reduction adds in: the data's own (Wide false: float32 for
// float32 and 16-bit data, flushed into float64 every kAddsPerFlush adds per
// lane), or float64 lanes of the data's vectors (Wide true). A scalar of the
// lane type, and its vectors.
template <class T, bool Wide>
using LaneScalar = std::conditional_t<Wide, double, T>;
template <class T, bool Wide>
struct LaneOf {
  using type = Vec<T>;
};
template <class T>
struct LaneOf<T, true> {
  using type = WideVec<T>;
};
template <class T, bool Wide>
using LaneVec = typename LaneOf<T, Wide>::type;

template <class T, bool Wide>
inline LaneVec<T, Wide> load_lanes(const LaneScalar<T, Wide>* p) {
  if constexpr (Wide) return load_wide<T>(p);
  else return load(p);
}

template <class T, bool Wide>
inline void store_lanes(LaneScalar<T, Wide>* p, LaneVec<T, Wide> v) {
  if constexpr (Wide) store_wide<T>(p, v);
  else store<T>(p, v);
}

// N per-channel sums fed run by run (a channel's rows of l elements), in
// lanes that persist across runs (Notes [Moments in float32 lanes] and
// [Gradient sums in float64]); odd elements go straight to the float64
// sums.
template <class T, int N, bool Wide, std::int64_t Accumulators = kAccumulators>
class LaneSums {
  using A = LaneVec<T, Wide>;
  static constexpr std::int64_t kAccumulators = Accumulators;

 public:
  std::array<double, N> sum{};

  // body(i, acc) adds the vector at element i to acc[0..N); tail(i, sum)
  // one element. The vectors live in locals for the run: as members, every
  // add was a load and a store through memory (store-forwarding chains that
  // made the loop compute-bound at half the L2 rate).
  template <class Body, class Tail>
  void run(std::int64_t len, Body&& body, Tail&& tail) {
    constexpr std::int64_t lanes = kLanes<T>;
    A acc[kAccumulators][N];
    for (std::int64_t q = 0; q < kAccumulators; ++q)
      for (int k = 0; k < N; ++k) acc[q][k] = acc_[q][k];
    int adds = adds_;
    auto added = [&] {
      if constexpr (!Wide) {
        if (++adds == kAddsPerFlush) {
          flush(acc);
          adds = 0;
        }
      }
    };
    std::int64_t k = 0;
    for (; k + kAccumulators * lanes <= len; k += kAccumulators * lanes) {
      for (std::int64_t q = 0; q < kAccumulators; ++q) body(k + q * lanes, acc[q]);
      added();
    }
    for (; k + lanes <= len; k += lanes) {  // leftover vectors rotate over the accumulators
      body(k, acc[next_]);
      if (++next_ == kAccumulators) {
        next_ = 0;
        added();
      }
    }
    for (; k < len; ++k) tail(k, sum);
    for (std::int64_t q = 0; q < kAccumulators; ++q)
      for (int n = 0; n < N; ++n) acc_[q][n] = acc[q][n];
    adds_ = adds;
  }

  // Adds what the vectors hold to the sums (call once, before reading them).
  void flush() {
    flush(acc_);
    adds_ = 0;
  }

 private:
  void flush(A (*acc)[N]) {
    for (std::int64_t q = 0; q < kAccumulators; ++q)
      for (int k = 0; k < N; ++k) {
        for (std::int64_t lane = 0; lane < kLanes<T>; ++lane) sum[k] += static_cast<double>(acc[q][k][lane]);
        acc[q][k] = A{};
      }
  }

  A acc_[kAccumulators][N] = {};
  int adds_ = 0;
  int next_ = 0;
};

template <class T>
using MomentSums = LaneSums<T, 2, false>;

// Adds sum(x - shift) and sum((x - shift)^2) over a run to `sums`, in the
// data's lanes (Note [Moments in float32 lanes]).
template <class T>
void shifted_sums(const T* __restrict x, std::int64_t len, T shift, MomentSums<T>& sums) {
  using A = LaneVec<T, false>;
  const Vec<T> vshift = splat(shift);
  sums.run(
      len,
      [&](std::int64_t i, A (&acc)[2]) {
        const Vec<T> d = load(x + i) - vshift;
        acc[0] += d;
        acc[1] += d * d;
      },
      [&](std::int64_t i, std::array<double, 2>& sum) {
        const auto d = static_cast<double>(x[i] - shift);
        sum[0] += d;
        sum[1] += d * d;
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

// Calls fn(std::integral_constant<ActivationKind, K>, std::bool_constant<from_output>,
// std::bool_constant<masked>); masked: a relu with its mask (Note [The relu
// mask] in core/batch_norm.cpp).
template <class Fn>
void dispatch_fusion(const BatchNormFusion& fusion, Fn&& fn) {
  auto with = [&]<ActivationKind K>(std::integral_constant<ActivationKind, K> kind) {
    if (fusion.from_output) fn(kind, std::true_type{}, std::false_type{});
    else fn(kind, std::false_type{}, std::false_type{});
  };
  switch (fusion.kind) {
    case ActivationKind::Relu:
      if (fusion.relu_mask != nullptr && !fusion.from_output)
        fn(std::integral_constant<ActivationKind, ActivationKind::Relu>{}, std::false_type{}, std::true_type{});
      else
        with(std::integral_constant<ActivationKind, ActivationKind::Relu>{});
      return;
    case ActivationKind::LeakyRelu: with(std::integral_constant<ActivationKind, ActivationKind::LeakyRelu>{}); return;
    case ActivationKind::Elu: with(std::integral_constant<ActivationKind, ActivationKind::Elu>{}); return;
    default: with(std::integral_constant<ActivationKind, ActivationKind::Identity>{}); return;
  }
}

// Float64 lanes of T vectors and float64 of T scalars.
template <class T>
struct ToWide {
  template <class V>
  auto operator()(V v) const {
    if constexpr (kIsVector<V>) return widen<T>(v);
    else return static_cast<double>(v);
  }
  // wide(v) * m + a and a + wide(v), as KeptWide computes them with a mask.
  template <class V, class W>
  W fma(V v, W m, W a) const {
    return (*this)(v) * m + a;
  }
  template <class W, class V>
  W add(W a, V v) const {
    return a + (*this)(v);
  }
};

// ---- the relu mask (Note [The relu mask] in core/batch_norm.cpp) -------------
// Kernels with a mask are instantiated for float (float32 and the 16-bit
// types) only: eight lanes, one mask byte, per vector. The backward reads
// dz = dy where the bit is set, else 0, and is then the identity's kernel.

template <class T>
constexpr bool kMaskable = std::is_same_v<T, float>;

// The kernels write a run's mask bytes out at each call (Masked ? mask +
// run * run_bytes + done / 8 : nullptr) on purpose: one helper function for
// them, semantically the same, changed GCC 12's inlining of the gradient
// sums into their caller (508 instructions left in it where there are 5,278)
// and made (256, 1024) fused-relu forward + backward 1.20-1.28x plain batch
// norm where this code measures 1.08-1.10x (bench_batchnorm_forms, the two
// builds in turn).
inline bool mask_bit(const std::uint8_t* mask, std::int64_t i) { return ((mask[i >> 3] >> (i & 7)) & 1) != 0; }

// Note [The mask on the sum]
// The backward kernels take dz = dy where the mask's bit is set, 0 in the
// other lanes, only into a float64 sum or multiply-add (the gradient sums'
// sum(dz) and sum(dz * x), the backward apply's dz * g + rest). So the mask
// applies to that operation (AVX-512's merge mask: the lanes whose bit is
// clear keep the sum as it was, as adding dz = 0 would, but for the sign of
// a zero) and dy converts to float64 unmasked, its load folded into the
// conversion as in plain batch norm: no operation more per vector than
// plain batch norm's but the mask's byte. Masking the conversion instead
// took a select or a masked conversion per vector, and a masked conversion
// that reads dy from memory streams slowly on Zen 4 (keep_lanes in
// simd.hpp). Measured on (256, 1024), against plain batch norm's stage: the
// backward apply 0.97-1.00x where the masked conversion took 1.06-1.08x,
// the gradient sums 1.04-1.09x where they took 1.06-1.10x; the whole layer
// 1.01-1.04x where it took 1.04-1.07x (docs/performance.md, "The mask on
// the sum").
struct KeptWide {
  std::uint8_t bits;
  // widen(dz) * m + a and a + widen(dz), each where the bit is set.
  WideVec<float> fma(Vec<float> v, WideVec<float> m, WideVec<float> a) const { return fma_kept(bits, v, m, a); }
  WideVec<float> add(WideVec<float> a, Vec<float> v) const { return add_kept(bits, a, v); }
};

// Note [Mask words]
// The relu mask's backward loops read one mask byte per vector beside dy
// and x. Where a loop walks four vectors at a time (the column sums'
// blocks, the row backward unrolled by four), it reads their four bytes as
// one 32-bit word: one load where there were four, and one address where
// GCC kept four offsets. At the AVX-512 level vector v's byte is then taken
// in a mask register (a kmovd per word and a kshiftrd per vector, where a
// shift in a general register and a kmovb cost two operations per vector),
// elsewhere by a shift. Measured on (256, 1024), the four stages against
// plain batch norm's: 1.10-1.14x with a byte load per vector, 1.07-1.09x
// with the words (docs/performance.md, "Mask words"); the mask registers
// took the backward apply from 1.10-1.11x to 1.07-1.08x ("Mask registers"),
// and the gradient sums, once the mask was on the sums (Note [The mask on
// the sum]), from 1.08x with the shift to 1.04-1.05x (two pairs of runs).
inline std::uint32_t mask_word(const std::uint8_t* bytes) {
  std::uint32_t word;
  __builtin_memcpy(&word, bytes, sizeof word);
  // One load, the bytes then taken from the register: left alone, GCC read
  // the word from memory again for each byte.
  __asm__("" : "+r"(word));
  return word;
}
// Vector V's byte of a word (V a template argument: the mask register's
// shift count is an immediate).
template <int V>
inline KeptWide kept_of_word(std::uint32_t word) {
#if defined(__AVX512BW__)
  const __mmask32 k = _cvtu32_mask32(word);
  if constexpr (V == 0) return KeptWide{static_cast<__mmask8>(k)};
  else return KeptWide{static_cast<__mmask8>(_kshiftri_mask32(k, 8 * V))};
#else
  return KeptWide{static_cast<std::uint8_t>(word >> (8 * V))};
#endif
}

// Calls whichever of the function objects takes the arguments.
template <class... F>
struct Overloads : F... {
  using F::operator()...;
};
template <class... F>
Overloads(F...) -> Overloads<F...>;  // Clang 14 deduces no aggregate's arguments

// How the vector of dz at element i of a run (the mask's run when Masked)
// enters the float64 sums and multiply-adds: widened, and with the mask's
// byte on the operation (Note [The mask on the sum]).
template <bool Masked, class T>
inline auto dz_wide(const std::uint8_t* mask, std::int64_t i) {
  if constexpr (Masked) return KeptWide{mask[i / kLanes<T>]};
  else return ToWide<T>{};
}

// dy at element i of a run, masked when Masked.
template <bool Masked, class T>
inline T grad_one(const T* dy, const std::uint8_t* mask, std::int64_t i) {
  if constexpr (Masked) return mask_bit(mask, i) ? dy[i] : T(0);
  else return dy[i];
}

// The activation the backward kernels compute with: the identity on the
// masked dy.
template <ActivationKind K, bool Masked>
constexpr ActivationKind kBackwardKind = Masked ? ActivationKind::Identity : K;

// y = relu(z) over a run of len elements starting on a mask byte, and its
// mask: z_vec(i) the vector at i, z_one(i) one element; y may be the input.
template <class ZVec, class ZOne>
void relu_masked_run(float* y, std::int64_t len, std::uint8_t* mask, ZVec&& z_vec, ZOne&& z_one) {
  constexpr std::int64_t lanes = kLanes<float>;
  std::int64_t i = 0;
  // Eight vectors' bytes stored as one word: a byte store per vector made
  // the (256, 1024) forward 1.5x slower (AMD Zen 4). With AVX-512 the word
  // is joined in mask registers (kunpck: seven for eight vectors, where a
  // move out, a shift and an or per vector took 24): that stage 1.05x plain
  // batch norm's against 1.06x (two pairs of runs; earlier ones measured it
  // inside their noise).
  for (; i + 8 * lanes <= len; i += 8 * lanes) {
#if defined(__AVX512BW__)
    __mmask8 k[8];
    for (int v = 0; v < 8; ++v) {
      const Vec<float> z = z_vec(i + v * lanes);
      k[v] = positive_lanes(z);
      store<float>(y + i + v * lanes, kept_part(k[v], z));
    }
    const __mmask64 word = _mm512_kunpackd(
        _mm512_kunpackw(_mm512_kunpackb(k[7], k[6]), _mm512_kunpackb(k[5], k[4])),
        _mm512_kunpackw(_mm512_kunpackb(k[3], k[2]), _mm512_kunpackb(k[1], k[0])));
    // Out through a copy: the mask's bytes have no 8-byte alignment, which
    // _store_mask64's pointer type would claim (UBSan reports it).
    const std::uint64_t bits = _cvtmask64_u64(word);
    __builtin_memcpy(mask + i / lanes, &bits, sizeof bits);
#else
    std::uint64_t word = 0;
    for (int v = 0; v < 8; ++v) {
      const Vec<float> z = z_vec(i + v * lanes);
      const std::uint8_t bits = positive_lanes(z);
      store<float>(y + i + v * lanes, kept_part(bits, z));
      word |= static_cast<std::uint64_t>(bits) << (8 * v);
    }
    __builtin_memcpy(mask + i / lanes, &word, sizeof word);
#endif
  }
  for (; i + lanes <= len; i += lanes) {
    const Vec<float> z = z_vec(i);
    const std::uint8_t bits = positive_lanes(z);
    store<float>(y + i, kept_part(bits, z));
    mask[i / lanes] = bits;
  }
  if (i == len) return;
  unsigned bits = 0;
  for (std::int64_t k = i; k < len; ++k) {
    const float z = z_one(k);
    const bool on = z > 0.0f;
    y[k] = on ? z : 0.0f;
    bits |= static_cast<unsigned>(on) << (k - i);
  }
  mask[i / lanes] = static_cast<std::uint8_t>(bits);
}

// Note [Moments in float32 lanes]
// The forward's moments add x - x0 (x0 each channel's first value) and its
// square in the data's own lanes, flushed into float64 every 32 adds per
// lane: the mean is then exact to about 1e-8 of the spread, which the
// output (and the variance) needs to 1e-5 with room to spare. grad_weight
// needs it to about 1e-10 where mean(dy) is far from 0 (8 replicas of 16k
// values per channel: 2.2e-5 of max(1, |dw|) from this mean alone), and
// gets it from the backward: the gradient sums add x in float64 too, and the
// stages correct the mean with the group's sum(x - mean) (Note [The exact
// mean from the backward] in core/batch_norm.cpp). Summing in float64 lanes
// here instead cost the forward 10-40% (docs/performance.md, "The exact
// reductions").

// Note [Gradient sums in float64]
// The gradient sums enter dx through mean(dy) and mean(dy * (x - mean)),
// multiplied by g = w * invstd, which reaches 1 / sqrt(eps) (316 for eps
// 1e-5) when the variance is far below eps: a float32 rounding of mean(dy)
// alone (6e-8 of it) then moves dx by 1.2e-5 of mean(dy) (measured: 1.8e-5
// of max(1, |dx|) for 45 rows with a spread of 1e-4 and mean(dy) 0.65), and
// grad_weight of 8 replicas of 16k values per channel, summed from float32
// partials of 32 products each, was off by 6.4e-5 of max(1, |dw|). So the
// terms are summed in float64 lanes: dz exactly, x, and dz * x, the exact
// product of two float32 values, from which center_gradient_sums makes
// sum(dz * (x - mean)) and sum(x - mean); no term and no partial sum is
// rounded to float32. From the output (in place) u comes from y in float32
// as before, and only the products and sums are float64. Cost:
// docs/performance.md, "The exact reductions" and "Float64 lanes in one
// conversion" (float32 products about a float32 mean, summed in float32
// lanes, were measured there too: off by 6.7e-6 of max(1, |dw|) on the
// 8-replica case, an error that grows as the square root of the count).

// From x, b takes sum(dz * x) and c sum(x), exact products and values of
// float32 summed in float64, and fast_gradient_sums subtracts mean * sum(dz)
// and count * mean once per channel at the end: one conversion and one
// fused multiply-add per vector fewer than forming x - mean in float64 per
// element (measured on 256x1024: forward+backward 1.19x the float32 sums'
// time against 1.25x), and exact enough: the float64 rounding of
// sum(dz * x) is 1e-16 of sum(|dz * x|), 1e-9 of the result for
// |mean| = 1e4 x std and a million values.
// wide_dz widens dz (dz_wide: with the relu mask where there is one).
template <ActivationKind K, bool FromOutput, class V, class W, class Terms, class E, class Wide, class WideDz = Wide>
inline void add_grad_terms(V dy, V s, const Terms& t, E alpha, W& a, W& b, W& c, Wide wide, WideDz wide_dz = {}) {
  V dz, u;
  fused_grad<K, FromOutput>(dy, s, t, alpha, dz, u);
  const W wu = FromOutput ? wide(u) : wide(s);
  a = wide_dz.add(a, dz);
  b = wide_dz.fma(dz, wu, b);
  c += wu;
}

using GradSums = std::array<double, 3>;

// Two accumulators of three float64-lane sums: four, as the moments take,
// spilled registers (24 of AVX-512's 32 for float, more than AVX2's 16).
template <class T>
using GradLaneSums = LaneSums<T, 3, true, 2>;

// Adds sum(dz), sum(dz * u) and sum(u) over a run of one channel to `sums`;
// `mask` is the run's relu mask when Masked (K is then the identity).
template <ActivationKind K, bool FromOutput, class T, bool Masked = false>
void gradient_sums(const T* __restrict dy, const T* __restrict s, std::int64_t len, const ChannelTerms<T>& t, T alpha,
                   GradLaneSums<T>& sums, const std::uint8_t* mask = nullptr) {
  using A = LaneVec<T, true>;
  const VectorTerms<T> vt = splat_terms(t);
  sums.run(
      len,
      [&](std::int64_t i, A (&acc)[3]) {
        add_grad_terms<K, FromOutput>(load(dy + i), load(s + i), vt, alpha, acc[0], acc[1], acc[2], ToWide<T>{},
                                      dz_wide<Masked, T>(mask, i));
      },
      [&](std::int64_t i, GradSums& sum) {
        add_grad_terms<K, FromOutput>(grad_one<Masked>(dy, mask, i), s[i], t, alpha, sum[0], sum[1], sum[2],
                                      ToWide<T>{}, ToWide<T>{});
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
// terms' (float64 for the backward). The table lives in the kernel's
// ScratchScope.
template <class T, int K, class U = T>
class TermTable {
 public:
  // term(j, std::integral_constant<int, Q>) -> U: term Q of channel j.
  template <class Term>
  TermTable(std::int64_t c, Term&& term)
      : data_(ScratchScope::take<U>(static_cast<std::size_t>((c + kLanes<T> - 1) / kLanes<T> * K * kLanes<T>))) {
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
  const U* vectors(std::int64_t j) const { return data_ + j * K; }
  U at(std::int64_t j, int q) const { return data_[index(j, q)]; }

 private:
  template <class One>
  void fill(std::int64_t full, std::int64_t c, One&& one, int q) {
    for (std::int64_t j0 = 0; j0 < full; j0 += kLanes<T>) {
      U* out = data_ + j0 * K + q * kLanes<T>;
      for (std::int64_t lane = 0; lane < kLanes<T>; ++lane) out[lane] = one(j0 + lane);
    }
    for (std::int64_t j = full; j < c; ++j) data_[index(j, q)] = one(j);
  }

  static std::size_t index(std::int64_t j, int q) {
    return static_cast<std::size_t>(j / kLanes<T> * K * kLanes<T> + q * kLanes<T> + j % kLanes<T>);
  }
  U* data_;  // from the kernel's ScratchScope (64-byte aligned)
};

template <class T>
using ForwardTable = TermTable<T, kForwardTerms>;
template <class T>
using BackwardTable = TermTable<T, kBackwardTerms, double>;

// y = act((x - hi) * scale + offset) over a run of one channel; y may be x
// (the in-place mode: each element is read before it is written).
// With `mask` (a relu on float), its bits are written too.
template <ActivationKind K, class T>
void normalize_run(const T* x, T* y, std::int64_t len, const std::array<T, kForwardTerms>& t, T alpha,
                   std::uint8_t* mask = nullptr) {
  // Explicit vectors: with the activation's compare the plain loop stayed
  // scalar, and without it the compiler's own vector loop was slower too
  // (64x256x14x14: 0.56-0.84 ms against 0.41-0.48).
  const T half_hi = t[kHalfHi], twice_scale = t[kTwiceScale], offset = t[kOffset];
  constexpr std::int64_t lanes = kLanes<T>;
  const Vec<T> vh = splat(half_hi), vs = splat(twice_scale), vo = splat(offset);
  if constexpr (K == ActivationKind::Relu && kMaskable<T>) {
    if (mask != nullptr) {
      relu_masked_run(
          y, len, mask, [&](std::int64_t i) { return (load(x + i) * splat(T(0.5)) - vh) * vs + vo; },
          [&](std::int64_t i) { return (x[i] * T(0.5) - half_hi) * twice_scale + offset; });
      return;
    }
  }
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
// `mask`: the run's relu mask when Masked (K is then the identity).
template <ActivationKind K, bool FromOutput, class T, bool Masked = false>
void backward_run(const T* __restrict dy, const T* __restrict s, T* __restrict dx, std::int64_t len,
                  const ChannelTerms<T>& c, T alpha, const std::array<double, kBackwardTerms>& t,
                  const std::uint8_t* mask = nullptr) {
  constexpr std::int64_t lanes = kLanes<T>;
  const VectorTerms<T> vc = splat_terms(c);
  const WideVec<T> g = WideVec<T>{} + t[kG], twice_bg = WideVec<T>{} + t[kTwiceBg], k = WideVec<T>{} + t[kK];
  std::int64_t i = 0;
  for (; i + lanes <= len; i += lanes) {
    Vec<T> dz, d;
    fused_grad<K, FromOutput, true>(load(dy + i), load(s + i), vc, alpha, dz, d);
    store<T>(dx + i, narrow<T>(dz_wide<Masked, T>(mask, i).fma(dz, g, -(widen<T>(d) * twice_bg) - k)));
  }
  for (; i < len; ++i) {
    T dz, d;
    fused_grad<K, FromOutput, true>(grad_one<Masked>(dy, mask, i), s[i], c, alpha, dz, d);
    dx[i] = static_cast<T>(static_cast<double>(dz) * t[kG] + (-(static_cast<double>(d) * t[kTwiceBg]) - t[kK]));
  }
}

// The same over channels [j0, j0 + len) of an (N, C) row; j0 is a multiple
// of the lane count.
// With `mask` (a relu on float: the mask byte of channel j0), its bits are
// written too.
template <ActivationKind K, class T>
void row_normalize(const T* x, T* y, std::int64_t j0, std::int64_t len, const ForwardTable<T>& t, T alpha,
                   std::uint8_t* mask = nullptr) {
  constexpr std::int64_t lanes = kLanes<T>;
  if constexpr (K == ActivationKind::Relu && kMaskable<T>) {
    if (mask != nullptr) {
      // The table's address in a local: the mask's byte stores may alias
      // anything, and the table object would be read again after each.
      const T* const terms = t.vectors(j0);
      relu_masked_run(
          y, len, mask,
          [&](std::int64_t j) {
            const T* v = terms + j * kForwardTerms;
            return (load(x + j) * splat(T(0.5)) - load(v + kHalfHi * lanes)) * load(v + kTwiceScale * lanes) +
                   load(v + kOffset * lanes);
          },
          [&](std::int64_t j) {
            return (x[j] * T(0.5) - t.at(j0 + j, kHalfHi)) * t.at(j0 + j, kTwiceScale) + t.at(j0 + j, kOffset);
          });
      return;
    }
  }
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
// `mask`: the mask byte of channel j0 when Masked (K is then the identity).
template <ActivationKind K, bool FromOutput, class T, bool Masked = false>
void row_backward(const T* __restrict dy, const T* __restrict s, T* __restrict dx, std::int64_t j0, std::int64_t len,
                  const ChannelTerms<const T*>& c, T alpha, const BackwardTable<T>& t,
                  const std::uint8_t* mask = nullptr) {
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
  // The vector at j, its terms at qj, dz widened by wide_dz.
  auto vector_at = [&](std::int64_t jj, const double* qj, auto wide_dz) {
    Vec<T> dz, d;
    terms(load(dy + jj), load(s + jj), j0 + jj, dz, d);
    store<T>(dx + jj, narrow<T>(wide_dz.fma(dz, load_wide<T>(qj + kG * lanes),
                                            -(widen<T>(d) * load_wide<T>(qj + kTwiceBg * lanes)) -
                                                load_wide<T>(qj + kK * lanes))));
  };
  std::int64_t j = 0;
  if constexpr (Masked) {
    // Four vectors' mask bytes as one word (Note [Mask words]).
    for (; j + 4 * lanes <= len; j += 4 * lanes, q += 4 * kBackwardTerms * lanes) {
      const std::uint32_t word = mask_word(mask + j / lanes);
      [&]<int... v>(std::integer_sequence<int, v...>) {
        (vector_at(j + v * lanes, q + v * kBackwardTerms * lanes, kept_of_word<v>(word)), ...);
      }(std::make_integer_sequence<int, 4>{});
    }
  }
  for (; j + lanes <= len; j += lanes, q += kBackwardTerms * lanes) vector_at(j, q, dz_wide<Masked, T>(mask, j));
  for (; j < len; ++j) {
    const std::int64_t at = j0 + j;
    T dz, d;
    terms(grad_one<Masked>(dy, mask, j), s[j], at, dz, d);
    dx[j] = static_cast<T>(static_cast<double>(dz) * t.at(at, kG) +
                           (-(static_cast<double>(d) * t.at(at, kTwiceBg)) - t.at(at, kK)));
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

template <ActivationKind K, bool FromOutput, class T, bool Masked = false>
void row_gradient_sums(const T* __restrict dy, const T* __restrict x, std::int64_t c, const ChannelTerms<const T*>& t,
                       T alpha, double* __restrict s, double* __restrict sx, double* __restrict su,
                       const std::uint8_t* mask = nullptr) {
  for (std::int64_t j = 0; j < c; ++j)
    add_grad_terms<K, FromOutput>(
        grad_one<Masked>(dy, mask, j), x[j], ChannelTerms<T>{t.hi[j], t.lo[j], t.half_hi[j], t.twice_scale[j], t.offset[j], t.shift[j]}, alpha,
        s[j], sx[j], su[j], ToWide<T>{});
}

// Every channel's ChannelTerms as six T arrays, converted once from the
// forward coefficients for the (N, C) kernels, which revisit every channel
// per tile or row; in the kernel's ScratchScope.
template <class T>
class ChannelColumns {
 public:
  ChannelColumns(const double* coef, std::int64_t c)
      : c_(c), data_(ScratchScope::take<T>(static_cast<std::size_t>(6 * c))) {
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
    T* out = data_ + q * c_;
    for (std::int64_t j = 0; j < c_; ++j) out[j] = one(j);
  }
  const T* plane(int q) const { return data_ + q * c_; }
  std::int64_t c_;
  T* data_;  // from the kernel's ScratchScope (64-byte aligned)
};

// Reductions over (N, C) input, in column blocks of V vectors of channels
// whose accumulators stay in registers while the loop walks a tile of rows
// (row-wise accumulation re-read and re-wrote per-channel arrays each row and
// stalled on 4 KiB aliasing). Tiles of 4 rows, each swept by 4-vector blocks
// across the whole row, keep the reads close to sequential (4 streams the
// prefetchers follow) and give 8 independent add chains; a block walking
// 32 rows 4 KiB apart before moving on ran 1.5x slower for (256, 1024). The
// partials live in per-channel arrays between tiles, those in the data's
// lanes flushed into float64 every kAddsPerFlush rows. Each channel adds its
// rows in order and flushes on the same rows whatever its block, so the sums
// do not depend on the blocking.
// Rows per tile. Rows of 1 KiB to 4 KiB (channels-last input of 256 to
// 1023 float32 channels, Note [Channel layouts] in core/batch_norm.cpp) take
// tiles of 32 rows, whose partials are loaded and stored once per 32 rows
// rather than per 4: 64x256x14x14 channels-last (rows of 1 KiB) took
// 1.14-1.19x its channels-first time with 4-row tiles and 1.04x with 32;
// rows of 256 B were best with 4 (1.04x against 1.13-1.17x with 32), and
// (256, 1024) keeps the 4 it was tuned with. Tile heights divide the flush
// period, so every channel still flushes on the same rows.
// Sums in float64 lanes (Wide) never flush, and take tiles of 64 such rows:
// half the partials' loads and stores again, 64x256x14x14 channels-last
// forward+backward 1.15 -> 1.10 of NCHW (medians of 6 paired runs).
inline std::int64_t tile_rows(std::int64_t row_bytes, bool wide = false) {
  if (row_bytes >= 1024 && row_bytes < 4096) return wide ? 2 * kAddsPerFlush : kAddsPerFlush;
  return 4;
}
constexpr int kWideBlock = 4;  // vectors per block

// The first tile starts its accumulators at zero, the others from the
// partials (no separate clearing pass over them).
template <class T, int N, bool Wide, int V, class Body>
void column_blocks(std::int64_t n, std::int64_t j0, std::int64_t j1, std::int64_t tile,
                   const std::array<LaneScalar<T, Wide>*, N>& partials, Body&& body) {
  using A = LaneVec<T, Wide>;
  constexpr std::int64_t lanes = kLanes<T>;
  for (std::int64_t i0 = 0; i0 < n; i0 += tile) {
    const std::int64_t i1 = std::min(n, i0 + tile);
    for (std::int64_t j = j0; j + V * lanes <= j1; j += V * lanes) {
      A acc[V][N];
      for (int v = 0; v < V; ++v)
        for (int k = 0; k < N; ++k) acc[v][k] = i0 == 0 ? A{} : load_lanes<T, Wide>(partials[k] + j + v * lanes);
      // Unrolled early, so that acc stays in registers: left to the late
      // unrolling, the larger body of the relu mask kept acc in memory. A
      // body may also take the whole block's row at once (body(i, j, acc)
      // with acc[V][N]), as the relu mask's gradient sums do.
      for (std::int64_t i = i0; i < i1; ++i) {
        if constexpr (std::is_invocable_v<Body&, std::int64_t, std::int64_t, A (&)[V][N]>) {
          body(i, j, acc);
        } else {
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) body(i, j + v * lanes, acc[v]);
        }
      }
      for (int v = 0; v < V; ++v)
        for (int k = 0; k < N; ++k) store_lanes<T, Wide>(partials[k] + j + v * lanes, acc[v][k]);
    }
  }
}

// Runs body(i, j, acc) over every full vector of channels of an (N, C)
// input, acc[0..N) its sums: 4-vector blocks, then 1-vector blocks for what
// is left, and adds the sums to sums[0..N); returns the number of channels
// covered (the caller sums the rest in float64).
template <class T, int N, bool Wide, class Body>
std::int64_t column_vectors(std::int64_t n, std::int64_t c, const std::array<double*, N>& sums, Body&& body) {
  using P = LaneScalar<T, Wide>;
  constexpr std::int64_t lanes = kLanes<T>, wide = kWideBlock * lanes;
  const std::int64_t wide_end = c / wide * wide, end = c / lanes * lanes;
  P* const storage = ScratchScope::take<P>(static_cast<std::size_t>(N * end));
  std::array<P*, N> partials;
  for (int k = 0; k < N; ++k) partials[static_cast<std::size_t>(k)] = storage + k * end;
  const std::int64_t tile = tile_rows(c * static_cast<std::int64_t>(sizeof(T)), Wide);
  // Float64 lanes need no flush: one period of all rows.
  const std::int64_t period = Wide ? std::max<std::int64_t>(n, 1) : kAddsPerFlush;
  for (std::int64_t i0 = 0; i0 < n; i0 += period) {
    const std::int64_t rows = std::min(period, n - i0);
    // Either form of body (a vector's sums or a block's, column_blocks).
    auto from_i0 = [&](std::int64_t i, std::int64_t j, auto& acc) -> decltype(body(i, j, acc)) {
      return body(i0 + i, j, acc);
    };
    column_blocks<T, N, Wide, kWideBlock>(rows, 0, wide_end, tile, partials, from_i0);
    column_blocks<T, N, Wide, 1>(rows, wide_end, end, tile, partials, from_i0);
    for (int k = 0; k < N; ++k)
      for (std::int64_t j = 0; j < end; ++j)
        sums[static_cast<std::size_t>(k)][j] += static_cast<double>(partials[static_cast<std::size_t>(k)][j]);
  }
  return end;
}

// s[j] += sum over rows of (x - shift[j]), ss[j] += its square, in the
// data's lanes (Note [Moments in float32 lanes]).
template <class T>
std::int64_t column_shifted_sums(const T* x, std::int64_t n, std::int64_t c, const T* shift, double* s, double* ss) {
  using A = LaneVec<T, false>;
  return column_vectors<T, 2, false>(n, c, {s, ss}, [&](std::int64_t i, std::int64_t j, A (&acc)[2]) {
    const Vec<T> d = load(x + i * c + j) - load(shift + j);
    acc[0] += d;
    acc[1] += d * d;
  });
}

// Note [Prefetching the column sums]
// Channels-last gradient sums over rows of 1 to 4 KiB walk a tile of rows
// one block of 64 channels at a time: each block reads 256 B of every row
// of the tile, rows 1 KiB apart, in two streams (dy and x). The hardware's
// prefetchers follow that poorly, and the sums waited on memory: 64x256x14x14
// channels-last forward+backward took 1.19-1.27x its NCHW time (tiles of 32
// rows). Each vector now asks for the same place 64 rows ahead, into L2:
// 1.07-1.13x in the same runs (32 to 128 rows ahead measured alike), and
// with tiles of 64 rows (tile_rows) 1.10 against 1.15 with 32. Inputs that
// stay in cache (below 1 MiB, or rows of 4 KiB and more, tiled by 4) do not
// prefetch: there the extra instructions cost up to a fifth ((256, 1024)
// with the fused relu).
constexpr std::int64_t kStreamedBytes = std::int64_t{1} << 20;

// The same over dy and x (or y): s[j] += sum(dz), sx[j] += sum(dz * u),
// su[j] += sum(u) (add_grad_terms), in float64 lanes (Note [Gradient sums
// in float64]).
// `mask`: the relu mask of the n rows when Masked (K is then the identity).
template <ActivationKind K, bool FromOutput, class T, bool Masked = false>
std::int64_t column_gradient_sums(const T* dy, const T* x, std::int64_t n, std::int64_t c,
                                  const ChannelColumns<T>& cols, T alpha, double* s, double* sx, double* su,
                                  const std::uint8_t* mask = nullptr) {
  const std::int64_t mask_row = core::detail::relu_mask_run_bytes(c, 1);
  using A = LaneVec<T, true>;
  // Inputs streamed from memory in tiles of 64 rows read a tile ahead
  // (Note [Prefetching the column sums]).
  const std::int64_t row_bytes = c * static_cast<std::int64_t>(sizeof(T)), tile = tile_rows(row_bytes, true);
  const bool prefetched = n * row_bytes >= kStreamedBytes && tile > 4;
  const auto sums = [&](auto prefetch) {
    const auto vector_at = [&](std::int64_t i, std::int64_t j, A (&acc)[3], auto wide_dz) {
      if constexpr (decltype(prefetch)::value) {
        if (i + tile < n) {
          __builtin_prefetch(dy + (i + tile) * c + j, 0, 2);
          __builtin_prefetch(x + (i + tile) * c + j, 0, 2);
        }
      }
      add_grad_terms<K, FromOutput>(load(dy + i * c + j), load(x + i * c + j), cols.vectors(j), alpha, acc[0], acc[1],
                                    acc[2], ToWide<T>{}, wide_dz);
    };
    const auto one = [&](std::int64_t i, std::int64_t j, A (&acc)[3]) {
      vector_at(i, j, acc, dz_wide<Masked, T>(Masked ? mask + i * mask_row : nullptr, j));
    };
    if constexpr (Masked) {
      // A block's four mask bytes as one word (Note [Mask words]).
      static_assert(kWideBlock == 4, "a block's mask bytes are one 32-bit word");
      const auto block = [&](std::int64_t i, std::int64_t j, A (&acc)[kWideBlock][3]) {
        const std::uint32_t word = mask_word(mask + i * mask_row + j / kLanes<T>);
        [&]<int... v>(std::integer_sequence<int, v...>) {
          (vector_at(i, j + v * kLanes<T>, acc[v], kept_of_word<v>(word)), ...);
        }(std::make_integer_sequence<int, kWideBlock>{});
      };
      return column_vectors<T, 3, true>(n, c, {s, sx, su}, Overloads{block, one});
    } else {
      return column_vectors<T, 3, true>(n, c, {s, sx, su}, one);
    }
  };
  return prefetched ? sums(std::true_type{}) : sums(std::false_type{});
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

// sum(dz), sum(dz * u) and sum(u) of every channel whose fast sums are not
// finite, in float64.
template <ActivationKind K, bool FromOutput, class T>
void redo_overflowed_gradient_sums(DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                                   const void* x, const double* coef, double alpha, double* sum_dy,
                                   double* sum_dy_xmu, double* sum_xmu) {
  const ForwardCoef f(coef, c);
  for (std::int64_t j = 0; j < c; ++j) {
    if (std::isfinite(sum_dy[j]) && std::isfinite(sum_dy_xmu[j]) && std::isfinite(sum_xmu[j])) continue;
    const std::vector<double> g = channel_values<T>(dy, dtype, n, c, l, j);
    const std::vector<double> v = channel_values<T>(x, dtype, n, c, l, j);
    const ChannelTerms<double> terms{f.hi[j], f.lo[j], f.hi[j] * 0.5, f.scale[j] * 2.0, f.shift[j] - f.lo[j] * f.scale[j],
                                     f.shift[j]};
    double s = 0, sx = 0, su = 0;
    for (std::size_t k = 0; k < v.size(); ++k) {
      double dz, u;
      fused_grad<K, FromOutput>(g[k], v[k], terms, alpha, dz, u);
      s += dz;
      sx += dz * u;
      su += u;
    }
    sum_dy[j] = s;
    sum_dy_xmu[j] = sx;
    sum_xmu[j] = su;
  }
}

}  // namespace
}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
