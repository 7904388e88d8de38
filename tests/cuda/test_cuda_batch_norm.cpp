// The CUDA batch-norm kernels against the CPU kernels (their specification)
// on shapes large enough to take the GPU's split reductions (many blocks per
// channel, several passes), which the small device-generic invariance cases
// do not reach. Runs only in the CUDA test binary (skipped without a GPU).

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/batch_norm_layers.hpp"
#include "support/compare.hpp"
#include "support/seeds.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"
#include "syncbn/parallel/replicate.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::make_batchnorm;
using syncbn::testing::spatial_dims_of;
using syncbn::testing::Tolerance;

namespace {

const Device kGpu = Device::cuda(0);
const Device kHost = Device::cpu(0);
// Both backends accumulate the statistics in float64 (the CPU through float32
// lanes of at most 32 values), so float32 results agree to float32 rounding.
constexpr Tolerance kFp32{1e-5, 1e-5};

// Gives the layer non-trivial affine parameters, the same on every backend.
void set_affine(nn::BatchNorm& layer, std::uint64_t seed) {
  const Shape c{layer.num_features()};
  layer.weight().value.copy_(Tensor::randn(c, seed, DType::Float32, kHost, 1.0, 0.5));
  layer.bias().value.copy_(Tensor::randn(c, seed + 1, DType::Float32, kHost));
}

struct Result {
  std::vector<double> y, dx, dw, db, rm, rv;
};

// Two training steps (running statistics after both), outputs of the second.
Result run_single(Device device, const Tensor& x, const Tensor& dy) {
  auto layer = make_batchnorm(false, spatial_dims_of(x.shape()), x.size(1), nn::BatchNormOptions{.device = device});
  set_affine(*layer, syncbn::testing::kSeed + 7);
  const Tensor xd = x.to(device), dyd = dy.to(device);
  layer->forward(xd);
  layer->backward(dyd);
  layer->weight().grad.fill_(0.0);
  layer->bias().grad.fill_(0.0);
  const Tensor y = layer->forward(xd);
  const Tensor dx = layer->backward(dyd);
  return Result{y.to_vector<double>(),
                dx.to_vector<double>(),
                layer->weight().grad.to_vector<double>(),
                layer->bias().grad.to_vector<double>(),
                layer->running_mean().to_vector<double>(),
                layer->running_var().to_vector<double>()};
}

// grad_weight and grad_bias are per-channel sums of `count` products of
// order 1 whose result can be far smaller than the sum of their magnitudes
// (cancellation): the two backends sum in different orders (CPU: float32
// lanes of 32 values flushed to float64; GPU: float64 split reductions), so
// their difference is bounded by a random-walk rounding error, not by the
// result's own size: absolute 1e-6 * sqrt(count).
Tolerance gradient_sum_tolerance(std::int64_t count) {
  return Tolerance{1e-5, std::max(1e-5, 1e-6 * std::sqrt(static_cast<double>(count)))};
}

void check_same(const Result& got, const Result& want, Tolerance tol, std::int64_t count, const std::string& what) {
  check_close(got.y, want.y, tol, what + " output");
  check_close(got.dx, want.dx, tol, what + " grad_input");
  check_close(got.dw, want.dw, gradient_sum_tolerance(count), what + " grad_weight");
  check_close(got.db, want.db, gradient_sum_tolerance(count), what + " grad_bias");
  check_close(got.rm, want.rm, kFp32, what + " running_mean");
  check_close(got.rv, want.rv, kFp32, what + " running_var");
}

}  // namespace

TEST_CASE("CUDA batch norm matches the CPU backend on large shapes", "[cuda]") {
  const auto dims = GENERATE(std::vector<std::int64_t>{32, 64, 28, 28}, std::vector<std::int64_t>{64, 256, 7, 7},
                             std::vector<std::int64_t>{1024, 256}, std::vector<std::int64_t>{3, 5, 4099},
                             std::vector<std::int64_t>{4, 32, 8, 16, 16}, std::vector<std::int64_t>{2, 3, 1, 1});
  const double mean = GENERATE(0.0, 1e4);
  CAPTURE(dims, mean, syncbn::testing::kSeed);
  const Shape shape(dims);
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, kHost, mean, 1.0);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float32, kHost);
  check_same(run_single(kGpu, x, dy), run_single(kHost, x, dy), kFp32, shape.numel() / shape[1], "cuda:0");
}

TEST_CASE("CUDA batch norm takes float16 and bfloat16 input like the CPU backend", "[cuda]") {
  const DType dtype = GENERATE(DType::Float16, DType::BFloat16);
  const auto dims = GENERATE(std::vector<std::int64_t>{16, 64, 14, 14}, std::vector<std::int64_t>{512, 128});
  CAPTURE(dtype, dims, syncbn::testing::kSeed);
  const Shape shape(dims);
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, kHost, 3.0, 2.0).to(dtype);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float32, kHost).to(dtype);
  // Outputs are rounded to 16 bits once on each backend: one unit of the
  // dtype's rounding apart at most.
  check_same(run_single(kGpu, x, dy), run_single(kHost, x, dy), syncbn::testing::tolerance_for(dtype),
             shape.numel() / shape[1], dtype_name(dtype));
}

TEST_CASE("SyncBatchNorm on logical replicas of one GPU equals CPU batch norm on the whole batch", "[cuda]") {
  const auto dims = GENERATE(std::vector<std::int64_t>{24, 64, 28, 28}, std::vector<std::int64_t>{1000, 512},
                             std::vector<std::int64_t>{6, 16, 8, 16, 16});
  const int k = GENERATE(2, 4);
  CAPTURE(dims, k, syncbn::testing::kSeed);
  const Shape shape(dims);
  const Tensor x = Tensor::randn(shape, syncbn::testing::kSeed, DType::Float32, kHost, 2.0, 3.0);
  const Tensor dy = Tensor::randn(shape, syncbn::testing::kSeed + 1, DType::Float32, kHost);
  const Result want = run_single(kHost, x, dy);

  auto layer = make_batchnorm(true, spatial_dims_of(shape), shape[1], nn::BatchNormOptions{.device = kGpu});
  set_affine(*layer, syncbn::testing::kSeed + 7);
  const std::vector<Device> devices(static_cast<std::size_t>(k), kGpu);
  auto replicas = parallel::replicate(*layer, devices);
  // Uneven shards, the last one empty.
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(k), 0);
  std::int64_t left = shape[0];
  for (int i = 0; i < k - 1; ++i) {
    sizes[static_cast<std::size_t>(i)] = i == k - 2 ? left : left / 2;
    left -= sizes[static_cast<std::size_t>(i)];
  }
  const Tensor xg = x.to(kGpu), dyg = dy.to(kGpu);
  Tensor y, dx;
  for (int step = 0; step < 2; ++step) {
    for (std::size_t r = 0; r < replicas.size(); ++r) {
      replicas[r].parameters()[0]->grad.fill_(0.0);
      replicas[r].parameters()[1]->grad.fill_(0.0);
    }
    const auto outs = parallel::parallel_apply(replicas, parallel::scatter(xg, devices, sizes));
    const auto grads = parallel::parallel_backward(replicas, parallel::scatter(dyg, devices, sizes));
    y = parallel::gather(outs, kHost);
    dx = parallel::gather(grads, kHost);
  }
  std::vector<double> dw(static_cast<std::size_t>(shape[1]), 0.0), db = dw;
  for (std::size_t r = 0; r < replicas.size(); ++r) {
    const auto w = replicas[r].parameters()[0]->grad.to_vector<double>();
    const auto b = replicas[r].parameters()[1]->grad.to_vector<double>();
    for (std::size_t j = 0; j < dw.size(); ++j) {
      dw[j] += w[j];
      db[j] += b[j];
    }
  }
  const Result got{y.to_vector<double>(),
                   dx.to_vector<double>(),
                   dw,
                   db,
                   layer->running_mean().to_vector<double>(),
                   layer->running_var().to_vector<double>()};
  check_same(got, want, kFp32, shape.numel() / shape[1], "SyncBatchNorm on " + std::to_string(k) + " replicas of cuda:0");
}
