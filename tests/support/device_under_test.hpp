#pragma once
// The device a device-generic test runs on. Device-generic test files are
// compiled into the CPU test binaries and, where CUDA is built, into the CUDA
// test binary with SYNCBN_TEST_CUDA=1: there every "device i" is cuda:0, so K
// replicas are K logical replicas sharing one GPU.

#include <string>
#include <vector>

#include "syncbn/core/device.hpp"

namespace syncbn::testing {

#if SYNCBN_TEST_CUDA
inline constexpr bool kTestOnCuda = true;
#else
inline constexpr bool kTestOnCuda = false;
#endif

/// Replica i's device: cpu:i, or cuda:0 in the CUDA test binary.
inline Device test_device(int i = 0) { return kTestOnCuda ? Device::cuda(0) : Device::cpu(i); }

/// The devices of k replicas.
inline std::vector<Device> test_devices(int k) {
  std::vector<Device> out;
  for (int i = 0; i < k; ++i) out.push_back(test_device(i));
  return out;
}

}  // namespace syncbn::testing
