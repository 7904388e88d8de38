#pragma once
// Device element types of each DType and their conversions through double,
// matching the CPU backend's rounding (float64 -> float32 -> 16-bit).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "syncbn/core/dtype.hpp"
#include "syncbn/error.hpp"

/// Loops i over [0, n) with a grid-stride loop (any grid covers any n).
#define SYNCBN_GRID_STRIDE(i, n)                                                           \
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<long long>(gridDim.x) * blockDim.x)

namespace syncbn::cuda::detail {

template <class T>
__device__ __forceinline__ double to_double(T v) {
  return static_cast<double>(v);
}
template <>
__device__ __forceinline__ double to_double<__half>(__half v) {
  return static_cast<double>(__half2float(v));
}
template <>
__device__ __forceinline__ double to_double<__nv_bfloat16>(__nv_bfloat16 v) {
  return static_cast<double>(__bfloat162float(v));
}

template <class T>
__device__ __forceinline__ T from_double(double v) {
  return static_cast<T>(v);
}
/// float64 to int64 saturates (NaN to 0, beyond the range to its ends) like
/// the CPU backend: the plain conversion is undefined for those values.
template <>
__device__ __forceinline__ long long from_double<long long>(double v) {
  if (v != v) return 0;
  if (v >= 9223372036854775807.0) return 9223372036854775807LL;
  if (v <= -9223372036854775808.0) return -9223372036854775807LL - 1;
  return static_cast<long long>(v);
}
template <>
__device__ __forceinline__ __half from_double<__half>(double v) {
  return __float2half_rn(static_cast<float>(v));
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}

/// The arithmetic type of an element type: float for float32 and the 16-bit
/// types, double for float64.
template <class T>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};

template <class T>
__device__ __forceinline__ typename ComputeOf<T>::type load_compute(const T* p, long long i) {
  return static_cast<typename ComputeOf<T>::type>(p[i]);
}
template <>
__device__ __forceinline__ float load_compute<__half>(const __half* p, long long i) {
  return __half2float(p[i]);
}
template <>
__device__ __forceinline__ float load_compute<__nv_bfloat16>(const __nv_bfloat16* p, long long i) {
  return __bfloat162float(p[i]);
}

template <class T>
__device__ __forceinline__ void store_compute(T* p, long long i, typename ComputeOf<T>::type v) {
  p[i] = static_cast<T>(v);
}
template <>
__device__ __forceinline__ void store_compute<__half>(__half* p, long long i, float v) {
  p[i] = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store_compute<__nv_bfloat16>(__nv_bfloat16* p, long long i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

/// Calls fn(T{}) with the device type of a floating dtype (not int64).
template <class Fn>
void dispatch_floating_device(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: fn(float{}); return;
    case DType::Float64: fn(double{}); return;
    case DType::Float16: fn(__half{}); return;
    case DType::BFloat16: fn(__nv_bfloat16{}); return;
    default: break;
  }
  SYNCBN_THROW(InvalidArgument, op, ": dtype ", dtype_name(dtype), " is not supported on CUDA");
}

/// Calls fn(T{}) with the device type of any dtype.
template <class Fn>
void dispatch_any(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: fn(float{}); return;
    case DType::Float64: fn(double{}); return;
    case DType::Float16: fn(__half{}); return;
    case DType::BFloat16: fn(__nv_bfloat16{}); return;
    case DType::Int64: fn(static_cast<long long>(0)); return;
  }
}

}  // namespace syncbn::cuda::detail
