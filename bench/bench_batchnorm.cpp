// bench_batchnorm: batch-norm training forward and forward+backward on the
// CPU backend, one replica and two replicas, beside a same-size streaming
// copy measured in the same run.
//
//   bench_batchnorm [--shapes 32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32]
//                   [--device cpu:0] [--device-list cpu:0,cpu:1]
//                   [--min-ms 200] [--reps 5] [--pair-reps 11] [--warmup 3] [--no-pairs]
//
// --device cuda:0 runs the one-replica rows on that GPU, with a
// device-to-device copy as `stream`, and the pairs on two logical replicas
// of it (--device-list cuda:0,cuda:0) unless --device-list says otherwise;
// every timed call then waits for the device to finish.
//
// Effective GB/s counts the passes an ideal kernel makes over the tensor of
// S bytes: forward 3 S (read for the statistics, read and write to
// normalise); forward+backward 8 S (forward, then read x and dy for the
// gradient sums, read x and dy and write dx). stream is a copy loop over S
// bytes (2 S). Rows:
//   bn-1      BatchNorm on the whole batch, one thread;
//   local-2   per-shard BatchNorm on two replicas (two threads, no exchange);
//   sync-2    SyncBatchNorm on the same two shards (two threads, statistics
//             exchanged every forward and backward);
// sync/local is the cost of synchronising: local and sync samples alternate
// (--pair-reps pairs), and the ratio row is the median of the per-pair ratios
// (each pair measured seconds apart), which this drifting VM needs. The
// "joined" rows repeat both with a barrier after every step (as a
// DataParallel step joins its threads), so that their ratio is the cost of
// the exchange alone. Check pass: the two-replica
// SyncBatchNorm output must equal the one-replica output (#wrong counts
// elements off by more than 1e-4 * (1 + |y|)). Each sample repeats the step
// until --min-ms have passed; the median of --reps samples is reported.
// --no-pairs prints the one-replica rows only (stream and bn-1).

#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/syncbn.hpp"

namespace {

using namespace std::chrono;
using namespace syncbn;

// BatchNorm{1,2,3}d for an input of `rank`, made synchronized by the
// library's own conversion when `sync`.
std::shared_ptr<nn::BatchNorm> make_bn(bool sync, int rank, std::int64_t c, Device device) {
  const nn::BatchNormOptions options{.device = device};
  std::shared_ptr<nn::Module> bn;
  if (rank <= 3) bn = std::make_shared<nn::BatchNorm1d>(c, options);
  else if (rank == 4) bn = std::make_shared<nn::BatchNorm2d>(c, options);
  else bn = std::make_shared<nn::BatchNorm3d>(c, options);
  if (sync) bn = nn::convert_sync_batchnorm(bn);
  return std::static_pointer_cast<nn::BatchNorm>(bn);
}

double time_it(const std::function<void()>& fn, double min_s, int reps, int warmup) {
  return bench::median_seconds_per_call(fn, min_s, reps, warmup);
}

// Runs step(i) on two persistent threads, `calls` times each, and returns
// the wall time per call; the threads start together.
class Pair {
 public:
  explicit Pair(std::function<void(int)> step) : step_(std::move(step)) {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this, i] { loop(i); });
  }
  ~Pair() {
    stop_ = true;
    generation_.fetch_add(1);
    generation_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void run(long calls) {
    calls_ = calls;
    done_.store(0);
    generation_.fetch_add(1);
    generation_.notify_all();
    // Wait on the value just tested: loading again could see the final count
    // and then wait for it to change, forever.
    for (int done = done_.load(); done < 2; done = done_.load()) done_.wait(done);
  }

 private:
  void loop(int i) {
    unsigned seen = 0;
    while (true) {
      generation_.wait(seen);
      seen = generation_.load();
      if (stop_) return;
      for (long c = 0; c < calls_; ++c) step_(i);
      done_.fetch_add(1);
      done_.notify_all();
    }
  }
  std::function<void(int)> step_;
  std::atomic<unsigned> generation_{0};
  std::atomic<int> done_{0};
  std::atomic<bool> stop_{false};
  long calls_ = 0;
  std::vector<std::thread> threads_;
};

double time_pair(Pair& pair, double min_s, int reps, int warmup) {
  pair.run(warmup);
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) {
    long calls = 1;
    while (true) {
      const auto start = steady_clock::now();
      pair.run(calls);
      const double elapsed = duration<double>(steady_clock::now() - start).count();
      if (elapsed >= min_s) {
        samples.push_back(elapsed / static_cast<double>(calls));
        break;
      }
      calls *= 2;
    }
  }
  return bench::summarize(samples).median;
}

void row(const char* shape, const char* what, double seconds, double passes, double bytes, long wrong) {
  std::printf("%-16s %-12s %10.4f %8.1f %7ld\n", shape, what, seconds * 1e3, passes * bytes / seconds / 1e9, wrong);
  std::fflush(stdout);
}

}  // namespace

static int run(int argc, char** argv) {
  using bench::flag;
  const auto shapes = bench::str_list(flag(argc, argv, "--shapes", "32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32"));
  // The one-replica rows and the stream run on --device; the pairs on
  // --device-list (by default two replicas of --device's kind).
  const Device device = Device::parse(flag(argc, argv, "--device", "cpu:0"));
  std::vector<Device> pair_devices;
  for (const auto& d : bench::str_list(flag(argc, argv, "--device-list", device.is_cuda() ? device.str() + "," + device.str() : "cpu:0,cpu:1")))
    pair_devices.push_back(Device::parse(d));
  const double min_s = std::stod(flag(argc, argv, "--min-ms", "200")) / 1e3;
  const int reps = std::stoi(flag(argc, argv, "--reps", "5"));
  const int warmup = std::stoi(flag(argc, argv, "--warmup", "3"));
  const int pair_reps = std::stoi(flag(argc, argv, "--pair-reps", "11"));
  const bool pairs = !bench::has_flag(argc, argv, "--no-pairs");

  std::printf("# bench_batchnorm: float32 NCHW, training mode, on %s, median of %d samples of >= %.0f ms\n",
              device.str().c_str(), reps, min_s * 1e3);
  std::printf("%s\n", bench::cpu_level_line().c_str());
  std::printf("%-16s %-12s %10s %8s %7s\n", "shape", "what", "time_ms", "GB/s", "#wrong");
  for (const auto& text : shapes) {
    std::vector<std::int64_t> dims;
    for (long d : bench::int_list([&] {
           std::string t = text;
           for (char& ch : t)
             if (ch == 'x') ch = ',';
           return t;
         }(), "--shapes"))
      dims.push_back(d);
    const Shape shape(dims);
    const std::int64_t c = shape[1];
    const double bytes = static_cast<double>(shape.numel()) * 4.0;
    const Tensor x = Tensor::randn(shape, 1, DType::Float32, Device::cpu(), 0.5, 2.0).to(device);
    const Tensor dy = Tensor::randn(shape, 2, DType::Float32, Device::cpu()).to(device);

    // On a GPU every timed call ends when the device has finished its work.
    auto timed = [&](const std::function<void()>& fn) {
      return time_it([&] { fn(); cuda::synchronize(device); }, min_s, reps, warmup);
    };
    const Tensor sink = Tensor::empty(shape, DType::Float32, device);
    row(text.c_str(), "stream", timed([&] {
          if (device.is_cuda()) sink.copy_(x);  // device-to-device copy
          else bench::stream_copy(sink.data<float>(), x.data<float>(), shape.numel());
        }),
        2, bytes, 0);

    // One replica.
    auto bn = make_bn(false, shape.rank(), c, device);
    const Tensor y_single = bn->forward(x).to(Device::cpu());
    row(text.c_str(), "fwd bn-1", timed([&] { bn->forward(x); }), 3, bytes, 0);
    row(text.c_str(), "fwd+bwd bn-1", timed([&] { bn->forward(x); bn->backward(dy); }), 8, bytes, 0);
    if (!pairs) continue;

    // Two replicas on two shards: per-shard BatchNorm and SyncBatchNorm,
    // sampled alternately so that both see the same machine conditions (this
    // VM drifts by 10-20% over seconds).
    const auto sizes = comm::even_chunk_sizes(shape[0], 2);
    const auto xs = comm::scatter(x, pair_devices, sizes);
    const auto dys = comm::scatter(dy, pair_devices, sizes);
    auto local_layer = make_bn(false, shape.rank(), c, pair_devices.front());
    auto sync_layer = make_bn(true, shape.rank(), c, pair_devices.front());
    auto local = parallel::replicate(*local_layer, pair_devices);
    auto synced = parallel::replicate(*sync_layer, pair_devices);
    long wrong = 0;
    {
      const Tensor y = comm::gather(parallel::parallel_apply(synced, xs), Device::cpu());
      const auto a = y.to_vector<float>(), b = y_single.to_vector<float>();
      for (std::size_t i = 0; i < a.size(); ++i) wrong += std::abs(a[i] - b[i]) > 1e-4 * (1 + std::abs(b[i]));
    }
    for (const bool joined : {false, true})
      for (const bool backward : {false, true}) {
        // joined: both threads meet at a barrier after every step, as the
        // threads of a DataParallel step do when its outputs are gathered;
        // the two variants then differ by the exchange alone, not by how far
        // the per-shard threads may drift apart between joins.
        std::barrier<> join(2);
        auto step = [&](parallel::Replication& r, int i) {
          r[static_cast<std::size_t>(i)].forward(xs[static_cast<std::size_t>(i)]);
          if (backward) r[static_cast<std::size_t>(i)].backward(dys[static_cast<std::size_t>(i)]);
          cuda::synchronize(pair_devices[static_cast<std::size_t>(i)]);  // no-op on a CPU device
          if (joined) join.arrive_and_wait();
        };
        Pair local_pair([&](int i) { step(local, i); });
        Pair sync_pair([&](int i) { step(synced, i); });
        std::vector<double> local_samples, sync_samples, ratios;
        for (int r = 0; r < pair_reps; ++r) {
          local_samples.push_back(time_pair(local_pair, min_s, 1, r == 0 ? warmup : 0));
          sync_samples.push_back(time_pair(sync_pair, min_s, 1, r == 0 ? warmup : 0));
          ratios.push_back(sync_samples.back() / local_samples.back());
        }
        const double tl = bench::summarize(local_samples).median, ts = bench::summarize(sync_samples).median;
        const auto ratio = bench::summarize(ratios);
        const std::string phase = std::string(backward ? "fwd+bwd" : "fwd") + (joined ? " joined" : "");
        row(text.c_str(), (phase + " local-2").c_str(), tl, backward ? 8 : 3, bytes, 0);
        row(text.c_str(), (phase + " sync-2").c_str(), ts, backward ? 8 : 3, bytes, wrong);
        std::printf("%-16s %-12s %10.3f  (min %.3f, max %.3f)\n", text.c_str(), (phase + " ratio").c_str(), ratio.median,
                    ratio.min, ratio.max);
      }
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_batchnorm: %s\n", e.what());
    return 1;
  }
}
