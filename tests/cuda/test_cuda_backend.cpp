// The CUDA backend against the CPU backend on the same inputs: the CPU
// kernels are the specification of the CUDA kernels. Runs only in the CUDA
// test binary (skipped without a GPU).

#include <catch2/catch.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "support/compare.hpp"
#include "support/seeds.hpp"
#include "syncbn/comm/collectives.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/core/ops.hpp"

using syncbn::Device;
using syncbn::DType;
using syncbn::Shape;
using syncbn::Tensor;
using syncbn::testing::check_close;
using syncbn::testing::check_equal;

namespace {

const Device kGpu = Device::cuda(0);
const Device kHost = Device::cpu(0);

std::vector<double> host_of(const Tensor& t) { return t.to_vector<double>(); }

}  // namespace

TEST_CASE("CUDA element-wise ops and reductions match the CPU backend", "[cuda]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64);
  const std::int64_t rows = GENERATE(1, 255, 1031);
  const std::int64_t cols = GENERATE(1, 33, 300);
  CAPTURE(dtype, rows, cols, syncbn::testing::kSeed);
  const Shape shape{rows, cols};
  const Tensor a_cpu = Tensor::randn(shape, syncbn::testing::kSeed, dtype, kHost);
  const Tensor b_cpu = Tensor::randn(shape, syncbn::testing::kSeed + 1, dtype, kHost);
  const Tensor a = a_cpu.to(kGpu), b = b_cpu.to(kGpu);
  const auto tol = syncbn::testing::tolerance_for(dtype);

  check_close(syncbn::core::add(a, b), host_of(syncbn::core::add(a_cpu, b_cpu)), tol, "add");
  check_close(syncbn::core::sub(a, b), host_of(syncbn::core::sub(a_cpu, b_cpu)), tol, "sub");
  check_close(syncbn::core::mul(a, b), host_of(syncbn::core::mul(a_cpu, b_cpu)), tol, "mul");
  check_close(syncbn::core::scale(a, 0.3), host_of(syncbn::core::scale(a_cpu, 0.3)), tol, "scale");
  const Tensor y = a.clone(), y_cpu = a_cpu.clone();
  syncbn::core::axpby_(y, 1.5, b, -0.5);
  syncbn::core::axpby_(y_cpu, 1.5, b_cpu, -0.5);
  check_close(y, host_of(y_cpu), tol, "axpby_");
  // Both backends accumulate in float64: the sums agree far below float32 rounding.
  check_close(syncbn::core::sum(a), host_of(syncbn::core::sum(a_cpu)), tol, "sum");
  check_close(syncbn::core::sum_rows(a), host_of(syncbn::core::sum_rows(a_cpu)), tol, "sum_rows");
}

TEST_CASE("CUDA fills, copies and conversions give the CPU backend's bits", "[cuda]") {
  const DType dtype = GENERATE(DType::Float32, DType::Float64, DType::Float16, DType::BFloat16, DType::Int64);
  CAPTURE(dtype);
  const Tensor x_cpu = Tensor::randn(Shape{1000}, syncbn::testing::kSeed, DType::Float64, kHost, 0.0, 100.0);
  const Tensor x = x_cpu.to(kGpu);
  check_equal(x.to(dtype).to_vector<double>(), x_cpu.to(dtype).to_vector<double>(), "convert float64 ->");
  check_equal(x.to(DType::Float32).to(dtype).to(DType::Float64).to_vector<double>(),
              x_cpu.to(DType::Float32).to(dtype).to(DType::Float64).to_vector<double>(), "convert float32 -> -> float64");
  check_equal(Tensor::full(Shape{77}, -1.2345, dtype, kGpu).to_vector<double>(),
              Tensor::full(Shape{77}, -1.2345, dtype, kHost).to_vector<double>(), "fill");
}

TEST_CASE("Work queued on one GPU from several replica threads stays correct", "[cuda]") {
  constexpr int kThreads = 4;
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &errors] {
      try {
        for (int round = 0; round < 50; ++round) {
          const Tensor a = Tensor::full(Shape{4096}, t + round, DType::Float32, kGpu);
          const Tensor b = syncbn::core::add(a, a);
          const double total = syncbn::core::sum(b).item();
          if (total != 2.0 * (t + round) * 4096) errors[static_cast<std::size_t>(t)] = "wrong sum in round " + std::to_string(round);
        }
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(t)] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& e : errors) CHECK(e.empty());
}

TEST_CASE("Collectives between the host and the GPU match the CPU-only results", "[cuda]") {
  const Tensor x = Tensor::randn(Shape{9, 4}, syncbn::testing::kSeed, DType::Float32, kHost);
  const std::vector<Device> mixed{kHost, kGpu, Device::cpu(1), kGpu};
  const auto chunks = syncbn::comm::scatter(x, mixed);
  CHECK(chunks[1].device() == kGpu);
  check_equal(syncbn::comm::gather(chunks, kGpu).to_vector<float>(), x.to_vector<float>(), "scatter/gather host<->gpu");
  const std::vector<std::vector<Tensor>> groups{{x}, {x.to(kGpu)}, {x.to(Device::cpu(2))}};
  const auto on_gpu = syncbn::comm::reduce_add_coalesced(groups, kGpu);
  const auto on_cpu = syncbn::comm::reduce_add_coalesced({{x}, {x}, {x}}, kHost);
  check_equal(on_gpu[0].to_vector<float>(), on_cpu[0].to_vector<float>(), "reduce onto the GPU vs the host");
}

TEST_CASE("cuBLAS opens on the first CUDA matrix product, which matches the CPU backend", "[cuda]") {
  const Tensor a = Tensor::randn({33, 17}, syncbn::testing::kSeed + 40, DType::Float32, kHost);
  const Tensor b = Tensor::randn({17, 9}, syncbn::testing::kSeed + 41, DType::Float32, kHost);
  const Tensor on_gpu = syncbn::core::matmul(a.to(kGpu), b.to(kGpu));
  check_close(on_gpu, host_of(syncbn::core::matmul(a, b)), syncbn::testing::tolerance_for(DType::Float32), "matmul on cuda:0");
  std::ifstream maps("/proc/self/maps");
  bool cublas_mapped = false;
  for (std::string line; std::getline(maps, line);) {
    cublas_mapped = cublas_mapped || line.find("libcublas") != std::string::npos;
  }
  CHECK(cublas_mapped);
}
