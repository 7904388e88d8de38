#pragma once
// Device: where a tensor's storage lives (a logical CPU device or a GPU).

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>

namespace syncbn::core {

/// The most replicas (devices) of one replicated model, and so the most
/// tensors that one sum_tensors or merge_moments call combines (a CUDA
/// kernel takes one pointer per replica, by value). replicate, DataParallel
/// and the collectives check it up front.
inline constexpr int kMaxReplicas = 64;

/// Kind of a device.
enum class DeviceKind : std::uint8_t { CPU, CUDA };

/// A device: a kind and an index. Logical CPU devices `cpu:0`, `cpu:1`, ...
/// all use host memory; they let every multi-replica path run (one thread per
/// device) without a GPU. `cuda:i` is GPU i of this process.
///
/// Creating a Device never checks that it exists; using it does (see
/// check_available()).
class Device {
 public:
  /// cpu:0.
  constexpr Device() noexcept = default;

  /// Logical CPU device `index` (>= 0; InvalidArgument otherwise).
  static Device cpu(int index = 0);
  /// GPU `index` (>= 0; InvalidArgument otherwise).
  static Device cuda(int index = 0);
  /// Parses "cpu", "cpu:3", "cuda", "cuda:0" (a missing index means 0).
  /// Throws InvalidArgument naming the string and the accepted forms.
  static Device parse(std::string_view text);

  constexpr DeviceKind kind() const noexcept { return kind_; }
  constexpr int index() const noexcept { return index_; }
  constexpr bool is_cpu() const noexcept { return kind_ == DeviceKind::CPU; }
  constexpr bool is_cuda() const noexcept { return kind_ == DeviceKind::CUDA; }
  /// True when tensors on both devices address the same memory: any two
  /// logical CPU devices (host memory), or the same GPU.
  constexpr bool shares_memory_with(Device other) const noexcept {
    return kind_ == other.kind_ && (is_cpu() || index_ == other.index_);
  }

  /// "cpu:3" or "cuda:0".
  std::string str() const;

  /// Throws unless the device can hold tensors: Unsupported for a CUDA device
  /// in a build without CUDA, InvalidArgument naming how many GPUs exist for
  /// an index out of range. CPU devices always pass.
  void check_available() const;

  friend constexpr bool operator==(Device a, Device b) noexcept { return a.kind_ == b.kind_ && a.index_ == b.index_; }
  friend constexpr bool operator!=(Device a, Device b) noexcept { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, Device d) { return os << d.str(); }

 private:
  constexpr Device(DeviceKind kind, int index) noexcept : kind_(kind), index_(index) {}
  DeviceKind kind_ = DeviceKind::CPU;
  int index_ = 0;
};

}  // namespace syncbn::core

// The vocabulary types are used everywhere: syncbn::Device names them too.
namespace syncbn {
using core::Device;
using core::DeviceKind;
}  // namespace syncbn

template <>
struct std::hash<syncbn::core::Device> {
  std::size_t operator()(syncbn::core::Device d) const noexcept {
    // Unsigned arithmetic: cpu:INT_MAX must not overflow.
    return std::hash<unsigned>()(static_cast<unsigned>(d.index()) * 2U + (d.is_cuda() ? 1U : 0U));
  }
};
