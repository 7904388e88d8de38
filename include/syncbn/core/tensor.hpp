#pragma once
// Tensor: a dense, contiguous, row-major array on one device.

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "syncbn/core/device.hpp"
#include "syncbn/core/dtype.hpp"
#include "syncbn/core/shape.hpp"

namespace syncbn::core {

namespace detail {
class Storage;
}

/// A dense, contiguous, row-major array of rank 0..5 on one device.
///
/// Copies of a Tensor share its storage (like a shared_ptr); clone() makes an
/// independent copy. rows() returns a zero-copy view of a range along
/// dimension 0. Element access from the host goes through to_vector() (which
/// copies, and waits for the device); data<T>() gives the raw pointer, a
/// device pointer for CUDA tensors.
///
/// Every mismatch of shape, dtype or device is an InvalidArgument naming the
/// operation, what was expected and what was given.
///
/// Thread safety: like a shared_ptr. Distinct tensors may be used from
/// distinct threads; concurrent writes to one storage are the caller's race.
class Tensor {
 public:
  /// An undefined tensor (no storage); defined() is false.
  Tensor() = default;

  // ---- factories ---------------------------------------------------------
  /// Uninitialised storage.
  static Tensor empty(const Shape& shape, DType dtype = DType::Float32, Device device = Device());
  static Tensor zeros(const Shape& shape, DType dtype = DType::Float32, Device device = Device());
  static Tensor ones(const Shape& shape, DType dtype = DType::Float32, Device device = Device());
  /// Every element `value` (rounded to dtype). For int64, InvalidArgument
  /// unless value is finite and within int64's range.
  static Tensor full(const Shape& shape, double value, DType dtype = DType::Float32, Device device = Device());
  /// A float32 tensor holding `values`; InvalidArgument unless shape.numel() == values.size().
  /// A non-owning view of `shape.numel()` elements of `dtype` at `data`,
  /// memory the caller owns on `device` (a host pointer for a CPU device, a
  /// device pointer for CUDA), which must stay valid while the tensor and
  /// its copies are used; nothing is copied, and nothing is freed with the
  /// last copy. How another front end hands its tensors to syncbn's stages
  /// without copying them. InvalidArgument for a null `data` with elements.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape, Device device = Device());
  /// A float64 tensor holding `values`.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape, Device device = Device());
  /// An int64 tensor holding `values`.
  static Tensor from_vector(const std::vector<std::int64_t>& values, const Shape& shape, Device device = Device());
  /// Normal(mean, stddev) samples from a counter-based generator: element i
  /// depends on (seed, i) only, so every device and dtype sees the same numbers
  /// (rounded to dtype).
  static Tensor randn(const Shape& shape, std::uint64_t seed, DType dtype = DType::Float32, Device device = Device(),
                      double mean = 0.0, double stddev = 1.0);
  /// Uniform [low, high) samples; same generator contract as randn.
  static Tensor rand(const Shape& shape, std::uint64_t seed, DType dtype = DType::Float32, Device device = Device(),
                     double low = 0.0, double high = 1.0);

  // ---- properties --------------------------------------------------------
  bool defined() const noexcept { return storage_ != nullptr; }
  const Shape& shape() const noexcept { return shape_; }
  int rank() const noexcept { return shape_.rank(); }
  /// Dimension i (negative counts from the end).
  std::int64_t size(int i) const { return shape_[i]; }
  std::int64_t numel() const noexcept { return shape_.numel(); }
  DType dtype() const noexcept { return dtype_; }
  Device device() const noexcept { return device_; }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  /// "Tensor(float32, (2, 3), cpu:0)".
  std::string str() const;

  // ---- data --------------------------------------------------------------
  /// Raw pointer to the first element (a device pointer on CUDA); null when empty.
  void* raw_data() const noexcept;
  /// Typed raw pointer; InvalidArgument unless dtype() matches T.
  template <class T>
  T* data() const {
    check_dtype_for_data(dtype_of<T>());
    return static_cast<T*>(raw_data());
  }
  /// Copies the elements to the host, converted to T (float, double or
  /// std::int64_t; to int64 as to(DType)). Waits for queued device work.
  template <class T>
  std::vector<T> to_vector() const;
  /// The single element of a one-element tensor, as double.
  double item() const;

  // ---- conversion and views ---------------------------------------------
  /// A copy on `device` (always a new storage, even on the same device).
  Tensor to(Device device) const;
  /// A copy converted to `dtype` on the same device (a new storage).
  /// Floating to int64 truncates toward zero and saturates: NaN gives 0,
  /// values beyond int64's range its smallest or largest value.
  Tensor to(DType dtype) const;
  /// An independent copy (same device and dtype).
  Tensor clone() const;
  /// Zero-copy view of rows [begin, end) along dimension 0 (rank >= 1,
  /// 0 <= begin <= end <= size(0)).
  Tensor rows(std::int64_t begin, std::int64_t end) const;
  /// Zero-copy view of `shape.numel()` consecutive elements starting at
  /// element `offset` of this tensor, with the given shape (how a packed
  /// buffer is split back into tensors). InvalidArgument unless
  /// 0 <= offset and offset + shape.numel() <= numel().
  Tensor view(std::int64_t offset, const Shape& shape) const;
  /// Zero-copy view with another shape of the same numel.
  Tensor reshape(const Shape& shape) const;
  /// True when both tensors view (part of) the same storage.
  bool shares_storage_with(const Tensor& other) const noexcept {
    return storage_ != nullptr && storage_ == other.storage_;
  }

  // ---- in place ----------------------------------------------------------
  // Like every in-place operation of syncbn, these act on the storage the
  // handle refers to, so they are const member functions (as shared_ptr's
  // operator* is): a const Tensor& names a handle, not immutable elements.

  /// Sets every element to `value`.
  const Tensor& fill_(double value) const;
  /// Copies `src` into this tensor: same shape and dtype, any device.
  const Tensor& copy_(const Tensor& src) const;

  // ---- internal ----------------------------------------------------------
  /// A tensor over `storage` (used by the backends and collectives).
  Tensor(std::shared_ptr<detail::Storage> storage, std::int64_t offset, const Shape& shape, DType dtype, Device device);
  const std::shared_ptr<detail::Storage>& storage() const noexcept { return storage_; }
  std::int64_t storage_offset() const noexcept { return offset_; }
  /// The same elements labelled as another logical device of the same kind
  /// and memory (CPU devices share host memory): how scatter gives cpu:i a
  /// zero-copy shard.
  Tensor relabel(Device device) const;
  /// This tensor on `device`: itself, a relabelled view where the memory is
  /// shared (Device::shares_memory_with), or a copy.
  Tensor onto(Device device) const;

 private:
  void check_dtype_for_data(DType requested) const;

  std::shared_ptr<detail::Storage> storage_;
  std::int64_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::Float32;
  Device device_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace syncbn::core

// The vocabulary types are used everywhere: syncbn::Tensor names them too.
namespace syncbn {
using core::Tensor;
}  // namespace syncbn
