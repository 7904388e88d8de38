#pragma once
// Between torch tensors and syncbn tensors without copying: a syncbn view
// of a contiguous torch tensor's memory (Tensor::from_blob), and a torch
// tensor over a syncbn tensor's storage that keeps that storage alive.

#include <cstdint>
#include <string_view>
#include <vector>

#include <torch/types.h>

#include "syncbn/core/tensor.hpp"
#include "syncbn/error.hpp"

namespace syncbn::libtorch::detail {

// The syncbn dtype of a torch tensor; InvalidArgument for another.
inline DType dtype_of(const torch::Tensor& t, std::string_view op, std::string_view what) {
  switch (t.scalar_type()) {
    case torch::kFloat: return DType::Float32;
    case torch::kDouble: return DType::Float64;
    case torch::kHalf: return DType::Float16;
    case torch::kBFloat16: return DType::BFloat16;
    case torch::kLong: return DType::Int64;
    default: break;
  }
  SYNCBN_THROW(InvalidArgument, op, ": ", what, " has dtype ", c10::toString(t.scalar_type()),
               ", expected float, double, half, bfloat16 or long");
}

inline torch::ScalarType scalar_type_of(DType t) {
  switch (t) {
    case DType::Float32: return torch::kFloat;
    case DType::Float64: return torch::kDouble;
    case DType::Float16: return torch::kHalf;
    case DType::BFloat16: return torch::kBFloat16;
    case DType::Int64: return torch::kLong;
  }
  return torch::kFloat;
}

// The syncbn device of a torch device: the CPU, or GPU i for cuda:i.
inline Device device_of(const torch::Device& d, std::string_view op, std::string_view what) {
  if (d.is_cpu()) return Device::cpu();
  SYNCBN_CHECK(d.is_cuda() && d.has_index(), op, ": ", what, " is on ", d.str(), ", expected the CPU or a GPU");
  return Device::cuda(d.index());
}

inline torch::Device torch_device_of(Device d) {
  return d.is_cuda() ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(d.index())) : torch::Device(torch::kCPU);
}

// A syncbn view of `t`'s memory (t contiguous, on the CPU or a GPU): what
// syncbn's stages read and write in place. An undefined tensor gives an
// undefined one.
inline Tensor view_of(const torch::Tensor& t, std::string_view op, std::string_view what) {
  if (!t.defined()) return Tensor();
  const Device device = device_of(t.device(), op, what);
  SYNCBN_CHECK(t.is_contiguous(), op, ": ", what, " is not contiguous, expected a contiguous tensor");
  std::vector<std::int64_t> dims(t.sizes().begin(), t.sizes().end());
  return Tensor::from_blob(t.data_ptr(), Shape(dims), dtype_of(t, op, what), device);
}

// A torch tensor over `t`'s storage, on its device, which it keeps alive.
inline torch::Tensor to_torch(const Tensor& t) {
  const std::vector<std::int64_t> sizes = t.shape().dims();
  return torch::from_blob(
      t.raw_data(), sizes, [keep = t](void*) mutable { keep = Tensor(); },
      torch::TensorOptions().dtype(scalar_type_of(t.dtype())).device(torch_device_of(t.device())));
}

}  // namespace syncbn::libtorch::detail
