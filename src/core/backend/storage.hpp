#pragma once
// Storage: the owner of one device allocation (RAII), shared by tensors.

#include <cstddef>

#include "syncbn/core/device.hpp"

namespace syncbn::core::detail {

/// One allocation on one device, released through its backend's memory table
/// when the last tensor viewing it goes away. Move-free and copy-free: it is
/// always held by shared_ptr.
class Storage {
 public:
  /// Allocates `nbytes` on `device` (no allocation for 0 bytes).
  Storage(Device device, std::size_t nbytes);
  /// Borrows `nbytes` at `data` on `device`, which the owner frees.
  Storage(Device device, void* data, std::size_t nbytes) noexcept
      : device_(device), nbytes_(nbytes), data_(data), owned_(false) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const noexcept { return data_; }
  std::size_t nbytes() const noexcept { return nbytes_; }
  Device device() const noexcept { return device_; }

 private:
  Device device_;
  std::size_t nbytes_;
  void* data_ = nullptr;
  bool owned_ = true;
};

}  // namespace syncbn::core::detail
