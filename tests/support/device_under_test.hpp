#pragma once
// The device a device-generic test runs on. The test binaries of the
// device-generic areas run their cases on CPU devices, and once more on
// cuda:0 where CTest sets SYNCBN_TEST_DEVICE=cuda (label cuda; the runner,
// support/catch_runner.cpp, reports every case skipped where no GPU exists):
// there every "device i" is cuda:0, so K replicas are K logical replicas
// sharing one GPU.

#include <cstdlib>
#include <string>
#include <vector>

#include "syncbn/core/device.hpp"

namespace syncbn::testing {

/// "cpu" (the default) or "cuda": SYNCBN_TEST_DEVICE; anything else is
/// reported by the runner before any case runs.
inline std::string test_device_kind() {
  const char* value = std::getenv("SYNCBN_TEST_DEVICE");
  return value == nullptr || *value == '\0' ? std::string("cpu") : std::string(value);
}

/// Whether this run tests the CUDA backend (read once).
inline bool test_on_cuda() {
  static const bool on_cuda = test_device_kind() == "cuda";
  return on_cuda;
}

/// Replica i's device: cpu:i, or cuda:0 in a CUDA run.
inline Device test_device(int i = 0) { return test_on_cuda() ? Device::cuda(0) : Device::cpu(i); }

/// The devices of k replicas.
inline std::vector<Device> test_devices(int k) {
  std::vector<Device> out;
  for (int i = 0; i < k; ++i) out.push_back(test_device(i));
  return out;
}

}  // namespace syncbn::testing
