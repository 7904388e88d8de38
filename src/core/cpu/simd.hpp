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
using WideVec [[gnu::vector_size(kLanes<T> * sizeof(double))]] = double;

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
#endif
  return __builtin_convertvector(v, WideVec<T>);
}

template <class T>
inline Vec<T> narrow(WideVec<T> v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return reinterpret_cast<Vec<T>>(_mm512_maskz_cvtpd_ps(0xff, reinterpret_cast<__m512d>(v)));
#endif
  return __builtin_convertvector(v, Vec<T>);
}

/// kLanes<T> doubles from p.
template <class T>
inline WideVec<T> load_wide(const double* p) {
  WideVec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

/// kLanes<T> doubles to p.
template <class T>
inline void store_wide(double* p, WideVec<T> v) {
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

/// v where bit k of `bits` is set, 0 in the other lanes.
inline Vec<float> keep_lanes(std::uint8_t bits, Vec<float> v) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  // v in a register first: GCC folds a load of v into a masked load, which
  // on AMD Zen 4 ran 2.3x slower than a plain one where the data stream from
  // memory (the relu mask's gradient sums on 32x64x56x56).
  __asm__("" : "+v"(v));
  return reinterpret_cast<Vec<float>>(_mm256_maskz_mov_ps(bits, reinterpret_cast<__m256>(v)));
#else
  using Lanes [[gnu::vector_size(32)]] = std::int32_t;
  const Lanes bit_of_lane{1, 2, 4, 8, 16, 32, 64, 128};
  const Lanes keep = ((Lanes{} + static_cast<std::int32_t>(bits)) & bit_of_lane) != 0;  // all ones or zero
  return reinterpret_cast<Vec<float>>(reinterpret_cast<Lanes>(v) & keep);
#endif
}

/// widen(v) where bit k of `bits` is set, 0 in the other lanes: at the
/// AVX-512 level the conversion's own mask, no instruction more. Folded
/// lets GCC fold a load of v into the masked conversion, where the caller
/// measured it faster (on Zen 4 it streams slowly from memory: see
/// keep_lanes).
template <bool Folded = false>
inline WideVec<float> widen_kept(std::uint8_t bits, Vec<float> v) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  if constexpr (!Folded) __asm__("" : "+v"(v));  // a plain load of v, as in keep_lanes
  return reinterpret_cast<WideVec<float>>(_mm512_maskz_cvtps_pd(bits, reinterpret_cast<__m256>(v)));
#else
  return widen<float>(keep_lanes(bits, v));
#endif
}

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
