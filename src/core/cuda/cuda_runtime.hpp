#pragma once
// RAII pieces of the CUDA backend: device guard, stream, event, and the one
// stream per device on which syncbn queues all its work.

#include <cuda_runtime.h>

#include <cstddef>

namespace syncbn::cuda::detail {

/// Makes `device` current for the guard's lifetime and restores the caller's
/// current device afterwards (never throws from the destructor).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool changed_ = false;
};

/// An owned non-blocking stream on one device. Move-only.
class Stream {
 public:
  explicit Stream(int device);
  ~Stream();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const noexcept { return stream_; }
  int device() const noexcept { return device_; }

 private:
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
};

/// An owned event without timing, for ordering work across streams. Move-only.
class Event {
 public:
  explicit Event(int device);
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  /// Records the event on `stream`.
  void record(cudaStream_t stream);
  /// Makes `stream` wait for the recorded work (no host wait).
  void wait_on(cudaStream_t stream) const;
  cudaEvent_t get() const noexcept { return event_; }

 private:
  int device_ = -1;
  cudaEvent_t event_ = nullptr;
};

/// A temporary device buffer, allocated and freed stream-ordered on the
/// device's syncbn stream (freeing never waits for the host). Move-only.
class ScratchBuffer {
 public:
  ScratchBuffer(int device, std::size_t nbytes);
  ~ScratchBuffer();
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  void* get() const noexcept { return ptr_; }
  template <class T>
  T* as() const noexcept {
    return static_cast<T*>(ptr_);
  }

 private:
  int device_;
  void* ptr_ = nullptr;
};

/// The stream on which syncbn queues all work of `device` (created on first
/// use). See Note [One stream per device] in cuda_runtime.cpp.
cudaStream_t stream_for(int device);

/// Makes work queued later on `consumer_device`'s stream wait for everything
/// queued so far on `producer_device`'s stream (no host wait; no-op for the
/// same device).
void order_after(int consumer_device, int producer_device);

/// Number of streaming multiprocessors of `device` (cached).
int multiprocessor_count(int device);

/// Throws InvalidArgument unless 0 <= device < device_count().
void check_device_index(int device);

/// Threads per block and the block count for an element-wise launch over n.
inline constexpr int kBlock = 256;
inline unsigned grid_for(long long n) {
  const long long blocks = (n + kBlock - 1) / kBlock;
  // A grid-stride loop covers the rest; 65535 * 256 elements per pass is plenty.
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

}  // namespace syncbn::cuda::detail
