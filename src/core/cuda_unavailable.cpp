// The syncbn::cuda queries in a build without the CUDA backend.

#include "syncbn/core/cuda.hpp"
#include "syncbn/error.hpp"

namespace syncbn::cuda {

bool is_built() noexcept { return false; }

int device_count() noexcept { return 0; }

void set_device(Device device) {
  if (device.is_cuda()) device.check_available();  // throws Unsupported
}

void synchronize(Device device) {
  if (device.is_cuda()) device.check_available();  // throws Unsupported
}

}  // namespace syncbn::cuda
