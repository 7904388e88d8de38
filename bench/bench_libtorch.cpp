// bench_libtorch: the libtorch bridge against libtorch alone, in the same
// run, float32 on the CPU:
//   layer     SyncBatchNorm2d forward+backward of one replica alone (K = 1)
//             against torch::nn::BatchNorm2d, one ATen thread each;
//   exchange  what synchronizing two replicas adds per layer and step
//             (two persistent workers, each its half, forward and backward
//             each a lockstep run: linked minus unlinked), for the bridge
//             and for syncbn's own nn::SyncBatchNorm2d;
//   step      a small torch ResNet's training step (SGD) with plain
//             BatchNorm on 1 ATen thread and on T threads, and through
//             libtorch::DataParallel over K replicas (cores / K threads each).
// Each round times every variant once (median of --reps samples of at
// least --min-ms); the rows are medians over the rounds, min-max beside.

#include <chrono>
#include <exception>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "bench_util.hpp"
#include "syncbn/libtorch/data_parallel.hpp"
#include "syncbn/libtorch/sync_batch_norm.hpp"
#include "syncbn/sync/worker_pool.hpp"
#include "syncbn/syncbn.hpp"

using namespace syncbn;
namespace lt = syncbn::libtorch;

namespace {

template <class Norm>
struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(std::int64_t c)
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(c, c, 3).padding(1).bias(false)))),
        bn1(register_module("bn1", Norm(torch::nn::BatchNormOptions(c)))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(c, c, 3).padding(1).bias(false)))),
        bn2(register_module("bn2", Norm(torch::nn::BatchNormOptions(c)))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return torch::relu(x + bn2->forward(conv2->forward(torch::relu(bn1->forward(conv1->forward(x))))));
  }
  torch::nn::Conv2d conv1;
  Norm bn1;
  torch::nn::Conv2d conv2;
  Norm bn2;
};

// Fashion-MNIST-sized: 1x28x28 -> 16 channels, a block, 32 channels at
// 14x14, a block, pooled, 10 classes.
template <class Norm>
struct NetImpl : torch::nn::Module {
  NetImpl()
      : stem(register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1).bias(false)))),
        bn(register_module("bn", Norm(torch::nn::BatchNormOptions(16)))),
        block1(register_module("block1", std::make_shared<BlockImpl<Norm>>(16))),
        down(register_module("down",
                             torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).stride(2).padding(1).bias(false)))),
        bn_down(register_module("bn_down", Norm(torch::nn::BatchNormOptions(32)))),
        block2(register_module("block2", std::make_shared<BlockImpl<Norm>>(32))),
        fc(register_module("fc", torch::nn::Linear(32, 10))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = block1->forward(torch::relu(bn->forward(stem->forward(x))));
    h = block2->forward(torch::relu(bn_down->forward(down->forward(h))));
    return fc->forward(h.mean({2, 3}));
  }
  torch::nn::Conv2d stem;
  Norm bn;
  std::shared_ptr<BlockImpl<Norm>> block1;
  torch::nn::Conv2d down;
  Norm bn_down;
  std::shared_ptr<BlockImpl<Norm>> block2;
  torch::nn::Linear fc;
};

using PlainNet = NetImpl<torch::nn::BatchNorm2d>;
using SyncNet = NetImpl<lt::SyncBatchNorm2d>;

struct Row {
  std::string name;
  std::vector<double> ms;  // one per round
};

void print_rows(const std::vector<Row>& rows) {
  for (const auto& r : rows) {
    const auto s = bench::summarize(r.ms);
    std::printf("%-44s %10.3f  [%.3f-%.3f]\n", r.name.c_str(), s.median, s.min, s.max);
  }
}

// Median ms per call of fn.
double time_ms(const std::function<void()>& fn, double min_s, int reps) {
  return 1e3 * bench::median_seconds_per_call(fn, min_s, reps, 2);
}

// Two replica workers (one ATen thread each) that run a forward and then a
// backward, each as one lockstep run of both (as syncbn's own
// parallel_apply and parallel_backward do), `iters` times: ms per
// iteration. Linked and unlinked layers are timed the same way, so their
// difference is the exchange, not the two threads' imbalance.
double two_workers_ms(sync::WorkerPool& pool,
                      const std::pair<std::function<void(int)>, std::function<void(int)>>& passes, int iters) {
  const std::function<void(int, const std::exception_ptr&)> ignore = [](int, const std::exception_ptr&) {};
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) {
    for (const auto* pass : {&passes.first, &passes.second})
      for (const auto& error : pool.run(*pass, ignore))
        if (error) std::rethrow_exception(error);
  }
  return 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
}

}  // namespace

int main(int argc, char** argv) {
  using bench::flag;
  const int rounds = std::stoi(flag(argc, argv, "--rounds", "3"));
  const int reps = std::stoi(flag(argc, argv, "--reps", "3"));
  const double min_s = std::stod(flag(argc, argv, "--min-ms", "200")) / 1e3;
  const int k = std::stoi(flag(argc, argv, "--replicas", "2"));
  const int threads = std::stoi(flag(argc, argv, "--threads", std::to_string(std::max(1u, std::thread::hardware_concurrency()))));
  const std::int64_t batch = std::stol(flag(argc, argv, "--batch", "64"));
  // One layer shape NxCxHxW instead of the three; --step 0 skips the step.
  const std::string only_shape = flag(argc, argv, "--shape", "");
  const bool with_step = flag(argc, argv, "--step", "1") != "0";
  std::printf("# bench_libtorch: libtorch %s, %d rounds; %s\n", TORCH_VERSION, rounds, bench::cpu_level_line().c_str());
  std::printf("# step: batch %ld of 1x28x28, %d replicas, torch alone on %d threads\n", static_cast<long>(batch), k,
              threads);
  torch::manual_seed(1);

  // Layer shapes: (N, C, H, W).
  std::vector<std::vector<std::int64_t>> shapes{{32, 64, 56, 56}, {64, 256, 14, 14}, {256, 1024, 1, 1}};
  if (!only_shape.empty()) {
    std::vector<std::int64_t> dims;
    std::size_t at = 0;
    for (std::size_t x; (x = only_shape.find('x', at)) != std::string::npos; at = x + 1)
      dims.push_back(std::stol(only_shape.substr(at, x - at)));
    dims.push_back(std::stol(only_shape.substr(at)));
    if (dims.size() != 4) {
      std::fprintf(stderr, "bench_libtorch: --shape %s, expected NxCxHxW\n", only_shape.c_str());
      return 2;
    }
    shapes = {dims};
  }
  std::vector<Row> rows;
  auto row = [&](const std::string& name) -> Row& {
    for (auto& r : rows)
      if (r.name == name) return r;
    return rows.emplace_back(Row{name, {}});
  };

  for (int round = 0; round < rounds; ++round) {
    at::set_num_threads(1);
    for (const auto& shape : shapes) {
      const std::int64_t c = shape[1];
      const std::string tag = std::to_string(shape[0]) + "x" + std::to_string(c) + "x" + std::to_string(shape[2]) +
                              "x" + std::to_string(shape[3]);
      const torch::Tensor x = torch::randn(shape).set_requires_grad(true);
      const torch::Tensor g = torch::randn(shape);
      torch::nn::BatchNorm2d plain(c);
      lt::SyncBatchNorm2d synced{torch::nn::BatchNormOptions(c)};
      const double t_plain = time_ms([&] { plain->forward(x).backward(g); }, min_s, reps);
      const double t_sync = time_ms([&] { synced->forward(x).backward(g); }, min_s, reps);
      row("layer " + tag + " torch BatchNorm2d (ms)").ms.push_back(t_plain);
      row("layer " + tag + " SyncBatchNorm2d K=1 (ms)").ms.push_back(t_sync);
      row("layer " + tag + " ratio").ms.push_back(t_sync / t_plain);

      // Two replicas, each its half: linked (exchanging) and not.
      const std::int64_t half = shape[0] / 2;
      std::vector<torch::Tensor> xs{x.detach().narrow(0, 0, half).clone().set_requires_grad(true),
                                    x.detach().narrow(0, half, half).clone().set_requires_grad(true)};
      std::vector<torch::Tensor> gs{g.narrow(0, 0, half).clone(), g.narrow(0, half, half).clone()};
      // Forward and backward as two lockstep runs, as parallel_apply and
      // parallel_backward run syncbn's own layer below.
      std::vector<torch::Tensor> ys(2);
      auto bridge_step = [&](std::vector<std::shared_ptr<torch::nn::Module>>& reps2) {
        return std::pair<std::function<void(int)>, std::function<void(int)>>{
            [&](int r) {
              const auto i = static_cast<std::size_t>(r);
              ys[i] = dynamic_cast<lt::SyncBatchNorm2dImpl&>(*reps2[i]).forward(xs[i]);
            },
            [&](int r) {
              const auto i = static_cast<std::size_t>(r);
              ys[i].backward(gs[i]);
              ys[i] = torch::Tensor();
            }};
      };
      std::vector<std::shared_ptr<torch::nn::Module>> unlinked{synced->clone(), synced->clone()};
      std::vector<std::shared_ptr<torch::nn::Module>> linked{synced->clone(), synced->clone()};
      lt::synchronize_replicas(linked);
      const int iters = std::max(20, static_cast<int>(0.3 / std::max(t_sync * 1e-3 / 2, 1e-6)));
      sync::WorkerPool workers(2, [](int) { at::set_num_threads(1); });
      two_workers_ms(workers, bridge_step(linked), 5);
      const double b_local = two_workers_ms(workers, bridge_step(unlinked), iters);
      const double b_sync = two_workers_ms(workers, bridge_step(linked), iters);
      row("exchange " + tag + " bridge, 2 replicas (us)").ms.push_back(1e3 * (b_sync - b_local));

      // syncbn's own layer, the same halves, through parallel_apply.
      const std::vector<Device> devices{Device::cpu(0), Device::cpu(1)};
      nn::BatchNorm2d own_local(c);
      nn::SyncBatchNorm2d own_sync(c);
      auto local_reps = parallel::replicate(own_local, devices);
      auto sync_reps = parallel::replicate(own_sync, devices);
      std::vector<Tensor> sx, sg;
      for (int r = 0; r < 2; ++r) {
        const torch::Tensor xc = xs[static_cast<std::size_t>(r)].detach().contiguous();
        const torch::Tensor gc = gs[static_cast<std::size_t>(r)].contiguous();
        sx.push_back(Tensor::from_vector(std::vector<float>(xc.data_ptr<float>(), xc.data_ptr<float>() + xc.numel()),
                                         Shape{half, c, shape[2], shape[3]}, devices[static_cast<std::size_t>(r)]));
        sg.push_back(Tensor::from_vector(std::vector<float>(gc.data_ptr<float>(), gc.data_ptr<float>() + gc.numel()),
                                         Shape{half, c, shape[2], shape[3]}, devices[static_cast<std::size_t>(r)]));
      }
      auto own_step = [&](parallel::Replication& reps2) {
        parallel::parallel_apply(reps2, sx);
        parallel::parallel_backward(reps2, sg);
      };
      own_step(sync_reps);
      const double o_local = time_ms([&] { own_step(local_reps); }, min_s, reps);
      const double o_sync = time_ms([&] { own_step(sync_reps); }, min_s, reps);
      row("exchange " + tag + " syncbn nn, 2 replicas (us)").ms.push_back(1e3 * (o_sync - o_local));
    }

    if (!with_step) continue;
    // The training step.
    const torch::Tensor x = torch::randn({batch, 1, 28, 28});
    const torch::Tensor y = torch::randint(0, 10, {batch}, torch::kLong);
    auto plain = std::make_shared<PlainNet>();
    torch::optim::SGD plain_sgd(plain->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
    auto plain_step = [&] {
      plain_sgd.zero_grad();
      torch::nn::functional::cross_entropy(plain->forward(x), y).backward();
      plain_sgd.step();
    };
    at::set_num_threads(1);
    const double one = time_ms(plain_step, min_s, reps);
    at::set_num_threads(threads);
    const double many = time_ms(plain_step, min_s, reps);
    at::set_num_threads(1);
    auto synced = std::make_shared<SyncNet>();
    lt::DataParallel dp(synced, {.replicas = k, .make_replica = [] { return std::make_shared<SyncNet>(); }});
    torch::optim::SGD synced_sgd(synced->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
    const lt::ReplicaLoss loss = [](torch::nn::Module& m, const torch::Tensor& xs, const torch::Tensor& t) {
      return torch::nn::functional::cross_entropy(static_cast<SyncNet&>(m).forward(xs), t);
    };
    const double runner = time_ms(
        [&] {
          synced_sgd.zero_grad();
          dp.step(x, y, loss);
          synced_sgd.step();
        },
        min_s, reps);
    row("step torch, 1 thread (ms)").ms.push_back(one);
    row("step torch, " + std::to_string(threads) + " threads (ms)").ms.push_back(many);
    row("step DataParallel, " + std::to_string(k) + " replicas (ms)").ms.push_back(runner);
    row("step speed-up of DataParallel over 1 thread").ms.push_back(one / runner);
    row("step speed-up of DataParallel over torch's threads").ms.push_back(many / runner);
  }
  std::printf("%-44s %10s  [min-max over rounds]\n", "what", "median");
  print_rows(rows);
  return 0;
}
