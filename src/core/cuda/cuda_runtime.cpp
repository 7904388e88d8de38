// CUDA backend runtime: device queries, RAII guard/stream/event, and the
// per-device stream registry.

#include "cuda/cuda_runtime.hpp"

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/error.hpp"

namespace syncbn::cuda {

bool is_built() noexcept { return true; }

int device_count() noexcept {
  // cudaGetDeviceCount fails without a driver or GPU; that means zero GPUs.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error state
      return 0;
    }
    return n;
  }();
  return count;
}

void set_device(Device device) {
  if (!device.is_cuda()) return;
  detail::check_device_index(device.index());
  SYNCBN_CUDA_CHECK(cudaSetDevice(device.index()));
}

void synchronize(Device device) {
  if (!device.is_cuda()) return;
  detail::check_device_index(device.index());
  SYNCBN_CUDA_CHECK(cudaStreamSynchronize(detail::stream_for(device.index())));
}

void* native_stream(Device device) {
  SYNCBN_CHECK(device.is_cuda(), "native_stream: ", device, " is not a GPU, expected a CUDA device");
  detail::check_device_index(device.index());
  return detail::stream_for(device.index());
}

namespace detail {

void check_device_index(int device) {
  const int count = device_count();
  SYNCBN_CHECK(device >= 0 && device < count, "Device: cuda:", device, " does not exist, expected an index below ",
               count, " (", count, " CUDA device(s) found)");
}

int multiprocessor_count(int device) {
  check_device_index(device);
  static std::mutex mutex;
  static std::vector<int> counts;
  std::lock_guard<std::mutex> lock(mutex);
  if (counts.empty()) counts.assign(static_cast<std::size_t>(device_count()), 0);
  int& count = counts[static_cast<std::size_t>(device)];
  if (count == 0) SYNCBN_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

DeviceGuard::DeviceGuard(int device) {
  SYNCBN_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    SYNCBN_CUDA_CHECK(cudaSetDevice(device));
    changed_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (changed_) (void)cudaSetDevice(previous_);
}

Stream::Stream(int device) : device_(device) {
  DeviceGuard guard(device);
  SYNCBN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

Stream::~Stream() {
  if (stream_ != nullptr) {
    // Destructors never throw; at process exit the runtime may already be gone.
    (void)cudaStreamDestroy(stream_);
  }
}

Stream::Stream(Stream&& other) noexcept : device_(other.device_), stream_(other.stream_) { other.stream_ = nullptr; }

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    device_ = other.device_;
    stream_ = other.stream_;
    other.stream_ = nullptr;
  }
  return *this;
}

Event::Event(int device) : device_(device) {
  DeviceGuard guard(device);
  SYNCBN_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
}

Event::~Event() {
  if (event_ != nullptr) (void)cudaEventDestroy(event_);
}

Event::Event(Event&& other) noexcept : device_(other.device_), event_(other.event_) { other.event_ = nullptr; }

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
    device_ = other.device_;
    event_ = other.event_;
    other.event_ = nullptr;
  }
  return *this;
}

void Event::record(cudaStream_t stream) {
  DeviceGuard guard(device_);
  SYNCBN_CUDA_CHECK(cudaEventRecord(event_, stream));
}

void Event::wait_on(cudaStream_t stream) const { SYNCBN_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }

ScratchBuffer::ScratchBuffer(int device, std::size_t nbytes) : device_(device) {
  if (nbytes == 0) return;
  DeviceGuard guard(device);
  SYNCBN_CUDA_CHECK(cudaMallocAsync(&ptr_, nbytes, stream_for(device)));
}

ScratchBuffer::~ScratchBuffer() {
  if (ptr_ == nullptr) return;
  try {
    DeviceGuard guard(device_);
    (void)cudaFreeAsync(ptr_, stream_for(device_));
  } catch (...) {
  }
}

// Note [One stream per device]
// syncbn queues every kernel and copy for device d on one non-blocking stream
// of d. Work of all replicas on d (several logical replicas may share one
// GPU) is then ordered by the order in which it was queued, and the
// master/slave rendezvous (a host-side hand-over) orders work across replica
// threads: a slave queues its statistics kernel before it posts its message,
// so the master's reduction, queued after it took the message, runs after it.
// Work on different GPUs is ordered with events (order_after). Memory is
// allocated and freed stream-ordered (cudaMallocAsync / cudaFreeAsync) on the
// same stream, so freeing a temporary never waits for the host. The registry
// lives for the whole process; its streams are destroyed at exit.
namespace {

struct StreamRegistry {
  std::mutex mutex;
  std::vector<std::unique_ptr<Stream>> streams;
};

StreamRegistry& registry() {
  static StreamRegistry instance;
  return instance;
}

}  // namespace

cudaStream_t stream_for(int device) {
  check_device_index(device);
  auto& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  if (reg.streams.empty()) reg.streams.resize(static_cast<std::size_t>(device_count()));
  auto& slot = reg.streams[static_cast<std::size_t>(device)];
  if (!slot) {
    slot = std::make_unique<Stream>(device);
    // Keep freed blocks in the device's pool instead of returning them to the
    // driver at every synchronisation: steady-state training then allocates
    // without driver calls.
    cudaMemPool_t pool = nullptr;
    SYNCBN_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    std::uint64_t keep_all = UINT64_MAX;
    SYNCBN_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
  }
  return slot->get();
}

void order_after(int consumer_device, int producer_device) {
  if (consumer_device == producer_device) return;
  Event done(producer_device);
  done.record(stream_for(producer_device));
  done.wait_on(stream_for(consumer_device));
}

}  // namespace detail
}  // namespace syncbn::cuda
