#pragma once
// Queries about the CUDA backend that need no CUDA headers.

#include "syncbn/core/device.hpp"

namespace syncbn::cuda {

/// True when this build of syncbn includes the CUDA backend.
bool is_built() noexcept;

/// Number of GPUs visible to this process; 0 when the backend is not built,
/// no driver is loaded or no GPU exists. Never throws.
int device_count() noexcept;

/// Makes `device` the calling thread's current GPU (no-op for a CPU device).
/// Throws as Device::check_available for an unavailable GPU.
void set_device(Device device);

/// Blocks until all work syncbn queued on `device` has finished (no-op for a
/// CPU device). Throws CudaError if that work failed.
void synchronize(Device device);

/// The CUDA stream (a cudaStream_t, as an opaque pointer) on which syncbn
/// queues all work of GPU `device`, for handing syncbn's buffers to other
/// CUDA libraries (NCCL, cuBLAS) in order with syncbn's own work. Throws as
/// Device::check_available for a device that is not an available GPU.
void* native_stream(Device device);

}  // namespace syncbn::cuda
