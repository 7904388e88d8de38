// bench_data_parallel: time of one training step under DataParallel.
//
//   bench_data_parallel [--devices-list cpu:0|cpu:0,cpu:1|cpu:0,cpu:1,cpu:2,cpu:3]
//                       [--width 1024] [--batch 256] [--steps 20] [--warmup 3] [--reps 5]
//
// Model "mlp": Linear(w,w)-ReLU-Linear(w,w)-ReLU-Linear(w,w), MSE loss, SGD
// with momentum; a step is zero_grad + forward + loss + backward + SGD step.
// Model "overhead": Linear(16,16) on the same batch, so that the step is the
// runtime's own cost (scatter, two thread hand-overs, gather, gradient
// reduction). Reports the median step time over --reps samples of --steps
// steps and samples/s. Check pass: the first step's loss with K devices must
// match the single-device loss (#wrong counts mismatches beyond 1e-4 relative).

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/syncbn.hpp"

namespace {

using namespace std::chrono;
using namespace syncbn;

std::shared_ptr<nn::Sequential> make_model(const std::string& kind, std::int64_t width) {
  auto m = std::make_shared<nn::Sequential>();
  if (kind == "overhead") {
    m->add(std::make_shared<nn::Linear>(16, 16, nn::LinearOptions{true, 1}));
    return m;
  }
  m->add(std::make_shared<nn::Linear>(width, width, nn::LinearOptions{true, 1}));
  m->add(std::make_shared<nn::ReLU>());
  m->add(std::make_shared<nn::Linear>(width, width, nn::LinearOptions{true, 2}));
  m->add(std::make_shared<nn::ReLU>());
  m->add(std::make_shared<nn::Linear>(width, width, nn::LinearOptions{true, 3}));
  return m;
}

struct Result {
  double step_s = 0;
  double first_loss = 0;
};

Result run(const std::string& kind, const std::vector<Device>& devices, std::int64_t width, std::int64_t batch,
           int steps, int warmup, int reps) {
  const std::int64_t features = kind == "overhead" ? 16 : width;
  auto model = make_model(kind, width);
  parallel::DataParallel dp(model, devices);
  optim::SGD sgd(model->parameters(), optim::SGDOptions{0.01, 0.9});
  nn::MSELoss loss;
  const Tensor x = Tensor::randn(Shape{batch, features}, 7);
  const Tensor target = Tensor::randn(Shape{batch, features}, 8);
  Result r;
  auto step = [&] {
    sgd.zero_grad();
    const double l = loss.forward(dp.forward(x), target).item();
    dp.backward(loss.backward());
    sgd.step();
    return l;
  };
  r.first_loss = step();
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> samples;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = steady_clock::now();
    for (int i = 0; i < steps; ++i) step();
    samples.push_back(duration<double>(steady_clock::now() - start).count() / steps);
  }
  r.step_s = bench::summarize(samples).median;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  using bench::flag;
  const std::int64_t width = std::stol(flag(argc, argv, "--width", "1024"));
  const std::int64_t batch = std::stol(flag(argc, argv, "--batch", "256"));
  const int steps = std::stoi(flag(argc, argv, "--steps", "20"));
  const int warmup = std::stoi(flag(argc, argv, "--warmup", "3"));
  const int reps = std::stoi(flag(argc, argv, "--reps", "5"));
  std::vector<std::vector<Device>> lists;
  std::string text = flag(argc, argv, "--devices-list", "cpu:0|cpu:0,cpu:1|cpu:0,cpu:1,cpu:2,cpu:3");
  std::size_t begin = 0;
  while (begin <= text.size()) {
    const std::size_t end = std::min(text.find('|', begin), text.size());
    std::vector<Device> list;
    for (const auto& d : bench::str_list(text.substr(begin, end - begin))) list.push_back(Device::parse(d));
    lists.push_back(list);
    begin = end + 1;
  }

  std::printf("# bench_data_parallel: width %ld, batch %ld, median of %d samples of %d steps (warm-up %d)\n", width,
              batch, reps, steps, warmup);
  std::printf("%-9s %3s %12s %12s %10s %7s\n", "model", "K", "step_ms", "samples/s", "GFLOP/s", "#wrong");
  for (const std::string kind : {"mlp", "overhead"}) {
    double reference_loss = 0;
    for (const auto& devices : lists) {
      const Result r = run(kind, devices, width, batch, steps, warmup, reps);
      if (devices.size() == 1) reference_loss = r.first_loss;
      const long wrong = std::abs(r.first_loss - reference_loss) > 1e-4 * std::abs(reference_loss) ? 1 : 0;
      // 3 GEMMs of 2*batch*w*w flops per layer and step (forward, dx, dW).
      const double flops = kind == "mlp" ? 3.0 * 3.0 * 2.0 * static_cast<double>(batch * width * width) : 0.0;
      std::printf("%-9s %3zu %12.3f %12.0f %10.1f %7ld\n", kind.c_str(), devices.size(), r.step_s * 1e3,
                  static_cast<double>(batch) / r.step_s, flops / r.step_s / 1e9, wrong);
      std::fflush(stdout);
    }
  }
  return 0;
}
