#pragma once
// 32-byte vectors (one AVX register, two SSE registers without AVX) through
// GCC/Clang vector types, for the CPU kernels whose loops the compiler does
// not vectorize (or keep in registers) on its own.

#include "cpu/isa.hpp"

#include <cstdint>
#include <type_traits>

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace syncbn::cpu::SYNCBN_CPU_ISA {

template <class T>
using Vec [[gnu::vector_size(32)]] = T;

/// Elements per vector.
template <class T>
constexpr std::int64_t kLanes = 32 / static_cast<std::int64_t>(sizeof(T));

template <class T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

template <class T>
inline void store(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}

/// The lanes of a Vec<T> as doubles (64 bytes for float, 32 for double):
/// what a kernel computes in float64 on float32 data uses.
template <class T>
struct WideOf {
  using type [[gnu::vector_size(kLanes<T> * sizeof(double))]] = double;
};

// The avx2 level: 32-byte registers, and neither 64-byte ones nor mask
// registers (Note [Wide pairs], keep_lanes, kept_part).
#if defined(__AVX__) && !defined(__AVX512F__)
#define SYNCBN_AVX_WITHOUT_AVX512 1
#else
#define SYNCBN_AVX_WITHOUT_AVX512 0
#endif

#if SYNCBN_AVX_WITHOUT_AVX512
// Note [Wide pairs]
// Without AVX-512 a 64-byte vector has no register: GCC keeps a generic one
// in memory and copies it in 8-byte pieces through general registers, which
// made the float64 gradient sums of (256, 1024) at the avx2 level 5.5x their
// avx512 time (and slower than the baseline level's). So the eight float64
// lanes of a float vector are two 32-byte vectors there, each a register.
struct WidePair {
  Vec<double> lo, hi;
  double operator[](int lane) const { return lane < 4 ? lo[lane] : hi[lane - 4]; }
  WidePair& operator+=(WidePair b) {
    lo += b.lo;
    hi += b.hi;
    return *this;
  }
};
inline WidePair operator+(WidePair a, WidePair b) { return {a.lo + b.lo, a.hi + b.hi}; }
inline WidePair operator-(WidePair a, WidePair b) { return {a.lo - b.lo, a.hi - b.hi}; }
inline WidePair operator*(WidePair a, WidePair b) { return {a.lo * b.lo, a.hi * b.hi}; }
inline WidePair operator-(WidePair a) { return {-a.lo, -a.hi}; }
inline WidePair operator+(WidePair a, double b) { return {a.lo + b, a.hi + b}; }

template <>
struct WideOf<float> {
  using type = WidePair;
};
#endif

template <class T>
using WideVec = typename WideOf<T>::type;

// At the AVX-512 level one instruction each way. GCC 12 lowers the generic
// conversion of eight floats to eight doubles as two four-lane conversions
// joined by an extract and an insert (it prefers 256-bit operations under
// -march=x86-64-v4): four instructions instead of one, which made the
// float64 gradient sums of (256, 1024) about 20% slower. (The all-lanes
// masked forms: the unmasked intrinsics start from an undefined vector that
// GCC 12 reports as maybe uninitialized.)
template <class T>
inline WideVec<T> widen(Vec<T> v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return reinterpret_cast<WideVec<T>>(_mm512_maskz_cvtps_pd(0xff, reinterpret_cast<__m256>(v)));
#elif SYNCBN_AVX_WITHOUT_AVX512
  if constexpr (std::is_same_v<T, float>) {
    const __m256 f = reinterpret_cast<__m256>(v);
    return {reinterpret_cast<Vec<double>>(_mm256_cvtps_pd(_mm256_castps256_ps128(f))),
            reinterpret_cast<Vec<double>>(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)))};
  } else
#endif
  return __builtin_convertvector(v, WideVec<T>);
}

template <class T>
inline Vec<T> narrow(WideVec<T> v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return reinterpret_cast<Vec<T>>(_mm512_maskz_cvtpd_ps(0xff, reinterpret_cast<__m512d>(v)));
#elif SYNCBN_AVX_WITHOUT_AVX512
  if constexpr (std::is_same_v<T, float>) {
    return reinterpret_cast<Vec<T>>(_mm256_set_m128(_mm256_cvtpd_ps(reinterpret_cast<__m256d>(v.hi)),
                                                    _mm256_cvtpd_ps(reinterpret_cast<__m256d>(v.lo))));
  } else
#endif
  return __builtin_convertvector(v, Vec<T>);
}

/// kLanes<T> doubles from p.
template <class T>
inline WideVec<T> load_wide(const double* p) {
#if SYNCBN_AVX_WITHOUT_AVX512
  // Half by half: copied whole, the pair went through the stack in 16-byte
  // pieces and was read back in 32-byte ones, a store-forwarding stall.
  if constexpr (std::is_same_v<T, float>) return {load<double>(p), load<double>(p + 4)};
  else
#endif
  {
    WideVec<T> v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
}

/// kLanes<T> doubles to p.
template <class T>
inline void store_wide(double* p, WideVec<T> v) {
#if SYNCBN_AVX_WITHOUT_AVX512
  if constexpr (std::is_same_v<T, float>) {
    store<double>(p, v.lo);
    store<double>(p + 4, v.hi);
  } else
#endif
  __builtin_memcpy(p, &v, sizeof v);
}

/// A vector with every lane `x`.
template <class T>
inline Vec<T> splat(T x) {
  return Vec<T>{} + x;
}

/// Bit k set where lane k of v is above 0 (clear for NaN): a relu's mask of
/// eight floats, one byte (Note [The relu mask] in core/batch_norm.cpp).
inline std::uint8_t positive_lanes(Vec<float> v) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  return _mm256_cmp_ps_mask(reinterpret_cast<__m256>(v), _mm256_setzero_ps(), _CMP_GT_OQ);
#elif defined(__AVX__)
  return static_cast<std::uint8_t>(
      _mm256_movemask_ps(_mm256_cmp_ps(reinterpret_cast<__m256>(v), _mm256_setzero_ps(), _CMP_GT_OQ)));
#elif defined(__SSE__)
  __m128 half[2];
  __builtin_memcpy(half, &v, sizeof v);
  const __m128 zero = _mm_setzero_ps();
  return static_cast<std::uint8_t>(_mm_movemask_ps(_mm_cmpgt_ps(half[0], zero)) |
                                   (_mm_movemask_ps(_mm_cmpgt_ps(half[1], zero)) << 4));
#else
  unsigned bits = 0;
  for (int k = 0; k < 8; ++k) bits |= static_cast<unsigned>(v[k] > 0.0f) << k;
  return static_cast<std::uint8_t>(bits);
#endif
}

#if SYNCBN_AVX_WITHOUT_AVX512
// Every byte's eight lanes as all-ones or zero words (8 KiB): a byte's lane
// mask in one load where spreading its bits took four operations.
struct alignas(32) LaneMasks {
  std::int32_t of[256][8];
};
inline constexpr LaneMasks kLaneMasks = [] {
  LaneMasks t{};
  for (int b = 0; b < 256; ++b)
    for (int k = 0; k < 8; ++k) t.of[b][k] = ((b >> k) & 1) != 0 ? -1 : 0;
  return t;
}();
#endif

/// v where bit k of `bits` is set, 0 in the other lanes.
inline Vec<float> keep_lanes(std::uint8_t bits, Vec<float> v) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  // v in a register first: GCC folds a load of v into a masked load, which
  // on AMD Zen 4 ran 2.3x slower than a plain one where the data stream from
  // memory (the relu mask's gradient sums on 32x64x56x56).
  __asm__("" : "+v"(v));
  return reinterpret_cast<Vec<float>>(_mm256_maskz_mov_ps(bits, reinterpret_cast<__m256>(v)));
#elif SYNCBN_AVX_WITHOUT_AVX512
  const __m256 keep = _mm256_load_ps(reinterpret_cast<const float*>(kLaneMasks.of[bits]));
  return reinterpret_cast<Vec<float>>(_mm256_and_ps(reinterpret_cast<__m256>(v), keep));
#else
  using Lanes [[gnu::vector_size(32)]] = std::int32_t;
  const Lanes bit_of_lane{1, 2, 4, 8, 16, 32, 64, 128};
  const Lanes keep = ((Lanes{} + static_cast<std::int32_t>(bits)) & bit_of_lane) != 0;  // all ones or zero
  return reinterpret_cast<Vec<float>>(reinterpret_cast<Lanes>(v) & keep);
#endif
}

/// z where bits = positive_lanes(z) is set, 0 in the other lanes: the
/// relu's output. Without AVX-512's masked move, max(z, 0) is one
/// instruction where keep_lanes takes two (the same lanes: max gives 0 for
/// NaN and for -0, as the clear bit does).
inline Vec<float> kept_part(std::uint8_t bits, Vec<float> z) {
#if SYNCBN_AVX_WITHOUT_AVX512
  (void)bits;
  return reinterpret_cast<Vec<float>>(_mm256_max_ps(reinterpret_cast<__m256>(z), _mm256_setzero_ps()));
#else
  return keep_lanes(bits, z);
#endif
}

/// widen(v) * m + a where bit k of `bits` is set, a in the other lanes: the
/// value of widen(keep_lanes(bits, v)) * m + a (but for the sign of a zero
/// sum), with the mask on the multiply-add (AVX-512's merge mask) rather
/// than on v, which then converts unmasked, its load folded into the
/// conversion (a masked conversion or load of v had a cost of its own on
/// Zen 4: keep_lanes).
inline WideVec<float> fma_kept(std::uint8_t bits, Vec<float> v, WideVec<float> m, WideVec<float> a) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  return reinterpret_cast<WideVec<float>>(_mm512_mask3_fmadd_pd(reinterpret_cast<__m512d>(widen<float>(v)),
                                                                 reinterpret_cast<__m512d>(m),
                                                                 reinterpret_cast<__m512d>(a), bits));
#else
  return widen<float>(keep_lanes(bits, v)) * m + a;
#endif
}

/// a + widen(v) where bit k of `bits` is set, a in the other lanes: the same
/// for a sum (a + 0 there, but for the sign of a zero).
inline WideVec<float> add_kept(std::uint8_t bits, WideVec<float> a, Vec<float> v) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  return reinterpret_cast<WideVec<float>>(
      _mm512_mask_add_pd(reinterpret_cast<__m512d>(a), bits, reinterpret_cast<__m512d>(a),
                         reinterpret_cast<__m512d>(widen<float>(v))));
#else
  return a + widen<float>(keep_lanes(bits, v));
#endif
}

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
