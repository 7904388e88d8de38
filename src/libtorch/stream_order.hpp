#pragma once
// The order between torch's work and syncbn's stages on a GPU
// (Note [The bridge on CUDA]).

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/types.h>

#include "syncbn/core/cuda.hpp"
#include "syncbn/core/device.hpp"

namespace syncbn::libtorch::detail {

// Note [The bridge on CUDA]
// syncbn queues a GPU's work on a stream of its own (cuda::native_stream),
// torch on the device's current stream. The bridge's stages read what torch
// wrote and torch reads what they wrote, so the stages of a CUDA tensor run
// between two host waits: for torch's current stream before the first
// stage, for syncbn's stream after the last. The forward waits on the host
// for every replica's statistics anyway, so the first wait costs little;
// the second costs the apply stage's latency. Ordering the two streams with
// events instead would need CUDA's own headers in this layer, which Debian's
// CPU-only libtorch cannot test: a measured next step where a GPU build of
// libtorch is at hand. On the CPU both waits are nothing.
class SyncbnStages {
 public:
  /// Before syncbn's first stage on `t`'s device: a GPU becomes the
  /// thread's current device and torch's queued work on it finishes.
  explicit SyncbnStages(const torch::Tensor& t) : device_(t.device()) {
    if (!device_.is_cuda()) return;
    guard_.reset_device(device_);
    c10::impl::getDeviceGuardImpl(device_.type())->getStream(device_).synchronize();
  }

  /// After syncbn's last stage: its work on a GPU finishes, so that torch
  /// may read the results. Throws CudaError when that work failed.
  void done() const {
    if (device_.is_cuda()) cuda::synchronize(Device::cuda(device_.index()));
  }

 private:
  torch::Device device_;
  c10::OptionalDeviceGuard guard_;
};

}  // namespace syncbn::libtorch::detail
