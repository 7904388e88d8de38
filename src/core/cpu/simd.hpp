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

/// A vector with every lane `x`.
template <class T>
inline Vec<T> splat(T x) {
  return Vec<T>{} + x;
}

}  // namespace syncbn::cpu::SYNCBN_CPU_ISA
