// The CUDA libraries a CUDA build of syncbn uses are opened when a GPU first
// needs them, not when a program starts (Note [cuBLAS on first use]).

#include <catch2/catch.hpp>

#include <fstream>
#include <string>

#include "support/device_under_test.hpp"
#include "support/skip.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/core/tensor.hpp"

namespace {

// The shared objects mapped into this process whose path contains `name`.
std::string mapped_files_containing(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::string line, found;
  while (std::getline(maps, line)) {
    if (line.find(name) != std::string::npos) found += line.substr(line.find('/')) + "\n";
  }
  return found;
}

}  // namespace

TEST_CASE("A program that computes on CPU devices only never opens cuBLAS", "[core]") {
  if (!syncbn::cuda::is_built()) SYNCBN_SKIP("this build has no CUDA backend");
  if (syncbn::testing::test_on_cuda()) SYNCBN_SKIP("a CUDA run opens cuBLAS by design");
  if (!std::ifstream("/proc/self/maps")) SYNCBN_SKIP("no /proc/self/maps to read the mapped libraries from");
  using syncbn::Device;
  using syncbn::DType;
  using syncbn::Tensor;
  // Matrix products, the work cuBLAS serves on a GPU, on a CPU device.
  const Tensor a = Tensor::randn({8, 16}, 1, DType::Float32, Device::cpu(0));
  const Tensor b = Tensor::randn({16, 4}, 2, DType::Float32, Device::cpu(0));
  const Tensor c = syncbn::core::matmul(a, b);
  CHECK(c.shape() == syncbn::Shape{8, 4});
  CHECK(mapped_files_containing("libcublas") == "");
}
