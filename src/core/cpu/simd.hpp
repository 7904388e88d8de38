#pragma once
// 32-byte vectors (one AVX register, two SSE registers without AVX) through
// GCC/Clang vector types, for the CPU kernels whose loops the compiler does
// not vectorize (or keep in registers) on its own.

#include "cpu/isa.hpp"

#include <cstdint>

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

template <class T>
inline WideVec<T> widen(Vec<T> v) {
  return __builtin_convertvector(v, WideVec<T>);
}

template <class T>
inline Vec<T> narrow(WideVec<T> v) {
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
