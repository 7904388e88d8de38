// bench_dist_exchange: what synchronizing one batch-norm layer across MPI
// processes costs per training step, run under mpirun (P processes):
//
//   mpirun -np P bench_dist_exchange [--channels 64,256,1024] [--threads 1,2]
//                                    [--iters 200] [--reps 7] [--warmup 20]
//
// Rows, per C and per K (replica threads per process):
//   exchange   the collectives one layer makes per step across processes,
//              as SyncBatchNorm makes them (Note [Hierarchical exchange]):
//              the forward all-gather of (int64 count, C means, C M2) and
//              the backward rank-order sum of 2C float64 values, each after
//              its header exchange (Note [Collective headers]);
//   layer      forward + backward of a SyncBatchNorm1d over (4 K, C) per
//              process through K replica threads (parallel_apply /
//              parallel_backward), minus the same with per-replica
//              BatchNorm1d: the exchange with the in-process rendezvous and
//              its hand-overs, what a user's step pays.
// Each rep times --iters steps between barriers; a row gives the median over
// --reps of the slowest rank's time per step, in microseconds.
// bench/torch_gloo_exchange.py times PyTorch's side: the collectives its
// SyncBatchNorm makes per layer, over Gloo.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/syncbn.hpp"

namespace {

using namespace syncbn;
using Clock = std::chrono::steady_clock;

// Median over reps of the slowest rank's microseconds per call of fn.
double slowest_median_us(comm::ProcessGroup& world, const std::function<void()>& fn, int iters, int reps,
                         int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) {
    world.barrier("bench: rep start", std::chrono::minutes(1));
    const auto start = Clock::now();
    for (int i = 0; i < iters; ++i) fn();
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iters;
    const auto all = world.all_gather(std::as_bytes(std::span(&us, 1)), "bench: times", std::chrono::minutes(1));
    double slowest = 0;
    for (int k = 0; k < world.size(); ++k) {
      double v;
      std::memcpy(&v, all.data() + static_cast<std::size_t>(k) * sizeof(double), sizeof(double));
      slowest = std::max(slowest, v);
    }
    samples.push_back(slowest);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

std::vector<Device> cpu_devices(long count) {
  std::vector<Device> d;
  for (long k = 0; k < count; ++k) d.push_back(Device::cpu(static_cast<int>(k)));
  return d;
}

// Forward + backward of one batch-norm layer over K replicas per step.
struct LayerStep {
  std::shared_ptr<nn::Module> layer;
  parallel::Replication replicas;
  std::vector<Tensor> inputs, grads;
  std::vector<Device> devices;

  LayerStep(bool sync, long channels, long threads, const std::shared_ptr<comm::ProcessGroup>& group)
      : layer(sync ? std::shared_ptr<nn::Module>(std::make_shared<nn::SyncBatchNorm1d>(
                         channels, nn::BatchNormOptions{}, std::chrono::minutes(1), group))
                   : std::make_shared<nn::BatchNorm1d>(channels)),
        replicas(parallel::replicate(*layer, cpu_devices(threads))),
        devices(cpu_devices(threads)) {
    for (long k = 0; k < threads; ++k) {
      const Device device = Device::cpu(static_cast<int>(k));
      inputs.push_back(Tensor::randn(Shape{4, channels}, static_cast<std::uint64_t>(k + 1), DType::Float32, device));
      grads.push_back(Tensor::randn(Shape{4, channels}, static_cast<std::uint64_t>(k + 100), DType::Float32, device));
    }
  }
  void operator()() {
    parallel::parallel_apply(replicas, inputs);
    parallel::parallel_backward(replicas, grads);
  }
};

}  // namespace

int main(int argc, char** argv) {
  using bench::flag;
  try {
    distributed::MpiSession mpi;
    auto world = mpi.world();
    const auto channels = bench::int_list(flag(argc, argv, "--channels", "64,256,1024"), "--channels");
    const auto threads = bench::int_list(flag(argc, argv, "--threads", "1,2"), "--threads");
    const int iters = std::stoi(flag(argc, argv, "--iters", "200"));
    const int reps = std::stoi(flag(argc, argv, "--reps", "7"));
    const int warmup = std::stoi(flag(argc, argv, "--warmup", "20"));
    const bool speaks = world->rank() == 0;
    if (speaks) {
      std::printf("# bench_dist_exchange: %d MPI processes; median of %d reps of %d steps, slowest rank, us per "
                  "layer and step\n",
                  world->size(), reps, iters);
      std::printf("%-8s %6s %4s %12s %12s %12s %12s\n", "P", "C", "K", "exchange_us", "layer_us", "sync_us",
                  "local_us");
    }
    for (const long c : channels) {
      // The exchange alone, with SyncBatchNorm's payloads.
      std::vector<std::byte> stats(sizeof(std::int64_t) + 2 * static_cast<std::size_t>(c) * sizeof(double));
      std::vector<double> sums(2 * static_cast<std::size_t>(c), 1.0);
      const double exchange = slowest_median_us(
          *world,
          [&] {
            world->all_gather(stats, "bench forward", std::chrono::minutes(1));
            world->all_reduce_sum(sums, "bench backward", std::chrono::minutes(1));
          },
          iters, reps, warmup);
      for (const long k : threads) {
        LayerStep synced(true, c, k, world), local(false, c, k, nullptr);
        const double sync_us = slowest_median_us(*world, [&] { synced(); }, iters, reps, warmup);
        const double local_us = slowest_median_us(*world, [&] { local(); }, iters, reps, warmup);
        if (speaks)
          std::printf("%-8d %6ld %4ld %12.2f %12.2f %12.2f %12.2f\n", world->size(), c, k, exchange,
                      sync_us - local_us, sync_us, local_us);
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_dist_exchange: %s\n", e.what());
    return 1;
  }
  return 0;
}
