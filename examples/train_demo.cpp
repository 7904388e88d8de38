// train_demo: an MLP learns to separate three interleaved 2-D spirals, with
// its batch-norm layers synchronized across replicas (or not), under
// DataParallel on logical CPU devices or GPUs.
//
//   train_demo [--devices cpu:0,cpu:1,cpu:2,cpu:3] [--per-device-batch 8]
//              [--steps 10000] [--bn sync|local|none] [--seed 1] [--lr 0.05]
//              [--csv out.csv] [--check] [--dist mpi]
//                                             (train_demo_usage.txt explains each)
//   mpirun -np 2 train_demo --dist mpi --devices cpu:0,cpu:1
//
// With --dist mpi every process of the job runs --devices on its own part
// of each global batch (per-device batch x devices x processes) through
// distributed::DistributedDataParallel, batch norm synchronized over every replica
// of every process; rank 0 prints and writes the CSV.
//
// Every step draws the same global batch (per-device batch x devices) from the
// training set for a given seed, so runs that differ only in --devices and
// --bn see the same data and the same initial weights: with the same global
// batch, --bn sync on many devices follows --bn local on one device (whole-
// batch statistics), while --bn local on many devices normalises each tiny
// shard with its own statistics. --check exits with status 1 unless the loss
// fell by 10% and the test accuracy beats 60% (the test suite runs a short
// training this way).

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "syncbn/syncbn.hpp"
#include "train_demo_usage.hpp"

namespace {

using namespace syncbn;

struct Flags {
  std::vector<Device> devices{Device::cpu(0), Device::cpu(1), Device::cpu(2), Device::cpu(3)};
  std::int64_t per_device_batch = 8;
  int steps = 10000;
  std::string bn = "sync";
  std::uint64_t seed = 1;
  double lr = 0.05;
  std::string csv;
  bool check = false;
  std::string dist;  // "" (one process) or "mpi"
};

// kUsage: examples/train_demo_usage.txt (scripts/demo.sh --help prints the
// same file without building anything).

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr, "train_demo: %s\n%s", problem.c_str(), kUsage);
  std::exit(2);
}

long parse_long(const char* flag, const char* text, long min) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < min)
    usage(std::string(flag) + ": expected an integer >= " + std::to_string(min) + ", got '" + text + "'");
  return v;
}

Flags parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(a + ": expected a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (a == "--devices") {
      f.devices.clear();
      std::string list = value();
      std::size_t begin = 0;
      while (begin <= list.size()) {
        const std::size_t end = std::min(list.find(',', begin), list.size());
        try {
          f.devices.push_back(Device::parse(list.substr(begin, end - begin)));
        } catch (const Error& e) {
          usage(e.what());
        }
        begin = end + 1;
      }
    } else if (a == "--per-device-batch") {
      f.per_device_batch = parse_long("--per-device-batch", value(), 1);
    } else if (a == "--steps") {
      f.steps = static_cast<int>(parse_long("--steps", value(), 1));
    } else if (a == "--bn") {
      f.bn = value();
      if (f.bn != "sync" && f.bn != "local" && f.bn != "none") usage("--bn: expected sync, local or none, got '" + f.bn + "'");
    } else if (a == "--seed") {
      f.seed = static_cast<std::uint64_t>(parse_long("--seed", value(), 0));
    } else if (a == "--lr") {
      char* end = nullptr;
      const char* text = value();
      f.lr = std::strtod(text, &end);
      if (*end != '\0' || !(f.lr > 0)) usage(std::string("--lr: expected a positive number, got '") + text + "'");
    } else if (a == "--csv") {
      f.csv = value();
    } else if (a == "--check") {
      f.check = true;
    } else if (a == "--dist") {
      f.dist = value();
      if (f.dist != "mpi") usage("--dist: expected mpi, got '" + f.dist + "'");
    } else {
      usage("unknown flag '" + a + "'");
    }
  }
  return f;
}

// Three interleaved spirals: class k's arm turns once from the centre.
struct Dataset {
  std::vector<float> x;  // (n, 2)
  std::vector<std::int64_t> y;
  std::int64_t n = 0;
};

Dataset spirals(std::int64_t per_class, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0.0, 0.04);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Dataset d;
  for (std::int64_t k = 0; k < 3; ++k)
    for (std::int64_t i = 0; i < per_class; ++i) {
      const double t = unit(rng);
      const double angle = 2.0 * M_PI * (static_cast<double>(k) / 3.0 + 1.0 * t);
      d.x.push_back(static_cast<float>(t * std::cos(angle) + noise(rng)));
      d.x.push_back(static_cast<float>(t * std::sin(angle) + noise(rng)));
      d.y.push_back(k);
    }
  d.n = 3 * per_class;
  return d;
}

std::shared_ptr<nn::Module> make_model(const std::string& bn, std::uint64_t seed, Device device,
                                       const std::shared_ptr<comm::ProcessGroup>& group) {
  auto m = std::make_shared<nn::Sequential>();
  auto linear = [&](std::int64_t in, std::int64_t out, std::uint64_t s) {
    return std::make_shared<nn::Linear>(in, out, nn::LinearOptions{true, nn::derive_seed(seed, s), DType::Float32, device});
  };
  auto norm = [&](std::int64_t c) { return std::make_shared<nn::BatchNorm1d>(c, nn::BatchNormOptions{.device = device}); };
  m->add(linear(2, 64, 1));
  if (bn != "none") m->add(norm(64));
  m->add(std::make_shared<nn::ReLU>());
  m->add(linear(64, 64, 2));
  if (bn != "none") m->add(norm(64));
  m->add(std::make_shared<nn::ReLU>());
  m->add(linear(64, 3, 3));
  return bn == "sync" ? nn::convert_sync_batchnorm(m, sync::kDefaultSyncTimeout, group) : m;
}

double accuracy(const Tensor& logits, const std::vector<std::int64_t>& labels, std::int64_t offset = 0) {
  const auto v = logits.to_vector<float>();
  const std::int64_t n = logits.size(0);
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = v.data() + i * 3;
    const std::int64_t guess = std::max_element(row, row + 3) - row;
    correct += guess == labels[static_cast<std::size_t>(offset + i)];
  }
  return n > 0 ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
}

// Accuracy of the model (eval mode, running statistics) on a whole dataset.
double evaluate(nn::Module& model, const Dataset& d, Device device) {
  model.eval();
  const Tensor x = Tensor::from_vector(d.x, Shape{d.n, 2}, device);
  const double acc = accuracy(model.forward(x), d.y);
  model.train();
  return acc;
}

void progress(int step, int steps, double loss, double acc, double rate, bool tty) {
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(static_cast<double>(kWidth) * step / steps);
  std::string bar(static_cast<std::size_t>(filled), '=');
  if (filled < kWidth) bar += '>' + std::string(static_cast<std::size_t>(kWidth - filled - 1), ' ');
  std::printf("%s[%s] step %5d/%d  loss %.4f  acc %5.1f%%  %8.0f samples/s%s", tty ? "\r" : "", bar.c_str(), step,
              steps, loss, 100.0 * acc, rate, tty ? "" : "\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Flags f = parse(argc, argv);
  try {
    const Device home = f.devices.front();
    const Dataset train = spirals(1000, f.seed);
    const Dataset test = spirals(300, f.seed + 1000);
    // --dist mpi: this process is one rank of the job's world group.
    std::optional<distributed::MpiSession> mpi;
    std::shared_ptr<comm::ProcessGroup> world;
    if (f.dist == "mpi") {
      mpi.emplace();
      world = mpi->world();
    }
    const int rank = world ? world->rank() : 0, processes = world ? world->size() : 1;
    auto model = make_model(f.bn, f.seed, home, world);
    parallel::DataParallelOptions options;
    options.allow_shared_devices = true;  // several logical replicas may share one GPU
    std::optional<parallel::DataParallel> dp;
    std::optional<distributed::DistributedDataParallel> ddp;
    if (world)
      ddp.emplace(model, f.devices, world, distributed::DistributedOptions{.local = options});
    else
      dp.emplace(model, f.devices, std::nullopt, options);
    optim::SGD sgd(model->parameters(), optim::SGDOptions{.lr = f.lr, .momentum = 0.9});
    nn::CrossEntropyLoss loss_fn;
    const std::int64_t local_batch = f.per_device_batch * static_cast<std::int64_t>(f.devices.size());
    const std::int64_t batch = local_batch * processes;
    const bool speaks = rank == 0;
    if (speaks)
      std::printf("train_demo: %d process(es) x %zu device(s) %s..., per-device batch %ld (global %ld), bn=%s, %d "
                  "steps, seed %lu\n",
                  processes, f.devices.size(), home.str().c_str(), static_cast<long>(f.per_device_batch),
                  static_cast<long>(batch), f.bn.c_str(), f.steps, static_cast<unsigned long>(f.seed));

    std::ofstream csv;
    if (!f.csv.empty() && speaks) {
      csv.open(f.csv);
      if (!csv) usage("--csv: cannot write '" + f.csv + "'");
      csv << "step,loss,loss_ema,batch_accuracy,samples_per_s\n";
    }
    std::mt19937_64 sampler(f.seed * 7919 + static_cast<std::uint64_t>(batch));
    std::uniform_int_distribution<std::int64_t> pick(0, train.n - 1);
    const bool tty = isatty(fileno(stdout)) != 0;
    const int report_every = tty ? std::max(1, f.steps / 200) : std::max(1, f.steps / 10);
    double ema = 0, first_ema = 0;
    const auto start = std::chrono::steady_clock::now();
    for (int step = 1; step <= f.steps; ++step) {
      std::vector<float> xs;
      std::vector<std::int64_t> ys;
      for (std::int64_t i = 0; i < batch; ++i) {
        const std::int64_t j = pick(sampler);
        xs.push_back(train.x[static_cast<std::size_t>(2 * j)]);
        xs.push_back(train.x[static_cast<std::size_t>(2 * j + 1)]);
        ys.push_back(train.y[static_cast<std::size_t>(j)]);
      }
      sgd.zero_grad();
      double loss = 0;
      Tensor logits;
      if (ddp) {
        // This rank's rows of the global batch every rank drew alike.
        const std::int64_t first = rank * local_batch;
        const Tensor x = Tensor::from_vector(
            std::vector<float>(xs.begin() + 2 * first, xs.begin() + 2 * (first + local_batch)), Shape{local_batch, 2},
            home);
        ys = std::vector<std::int64_t>(ys.begin() + first, ys.begin() + first + local_batch);
        logits = ddp->forward(x);
        const double mine = loss_fn.forward(logits, Tensor::from_vector(ys, Shape{local_batch}, home)).item();
        ddp->backward(loss_fn.backward());
        // The whole batch's loss (equal parts: the mean of the ranks').
        const double share = mine / processes;
        loss = world->all_reduce_sum(std::span(&share, 1), "train_demo: loss", sync::kDefaultSyncTimeout)[0];
      } else {
        const Tensor x = Tensor::from_vector(xs, Shape{batch, 2}, home);
        const Tensor y = Tensor::from_vector(ys, Shape{batch}, home);
        logits = dp->forward(x);
        loss = loss_fn.forward(logits, y).item();
        dp->backward(loss_fn.backward());
      }
      sgd.step();

      ema = step == 1 ? loss : 0.98 * ema + 0.02 * loss;
      if (step == 50) first_ema = ema;
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = static_cast<double>(batch) * step / elapsed;
      const double acc = accuracy(logits, ys);
      if (csv) csv << step << ',' << loss << ',' << ema << ',' << acc << ',' << rate << '\n';
      if (speaks && (step % report_every == 0 || step == f.steps)) progress(step, f.steps, ema, acc, rate, tty);
    }
    if (tty && speaks) std::printf("\n");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double train_acc = evaluate(*model, train, home);
    const double test_acc = evaluate(*model, test, home);
    if (speaks)
      std::printf("train_demo: %.1f s, final loss %.4f, train accuracy %.1f%%, test accuracy %.1f%%\n", seconds, ema,
                  100.0 * train_acc, 100.0 * test_acc);
    if (f.check) {
      // Training-mode loss with batch norm stays noisy (batch statistics), so
      // the check asks for a clear fall and for accuracy far above chance (1/3).
      const double baseline = first_ema > 0 ? first_ema : ema;
      if (!(ema < 0.9 * baseline) || !(test_acc > 0.6)) {
        std::fprintf(stderr, "train_demo: training did not work (loss %.4f after 50 steps, %.4f at the end; test accuracy %.1f%%)\n",
                     baseline, ema, 100.0 * test_acc);
        return 1;
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "train_demo: %s\n", e.what());
    return 1;
  }
  return 0;
}
