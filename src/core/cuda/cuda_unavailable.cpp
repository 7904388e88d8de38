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

void* native_stream(Device device) {
  device.check_available();  // throws Unsupported for a GPU
  SYNCBN_THROW(InvalidArgument, "native_stream: ", device, " is not a GPU, expected a CUDA device");
}

}  // namespace syncbn::cuda
