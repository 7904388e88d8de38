#pragma once
// 32-byte vectors (one AVX register, two SSE registers without AVX) through
// GCC/Clang vector types, for the CPU kernels whose loops the compiler does
// not vectorize (or keep in registers) on its own.

#include "cpu/isa.hpp"

#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
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

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
