// comm_demo: K replica threads exchange per-channel statistics through a
// SyncMaster each round; the master reduces them in replica order and
// broadcasts the totals, and every replica prints what it received.
//
//   comm_demo [--threads K] [--channels C] [--rounds R]

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "syncbn/sync/sync_master.hpp"

namespace {

struct Partial {
  std::vector<double> sum;
  std::vector<double> ssum;
  long count = 0;
};

struct Total {
  std::vector<double> mean;
  std::vector<double> var;
  long count = 0;
};

int parse_flag(int argc, char** argv, const std::string& name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (name == argv[i]) {
      const int v = std::atoi(argv[i + 1]);
      if (v < 1) {
        std::fprintf(stderr, "comm_demo: %s must be >= 1, got %s\n", name.c_str(), argv[i + 1]);
        std::exit(2);
      }
      return v;
    }
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const int k = parse_flag(argc, argv, "--threads", 4);
  const int channels = parse_flag(argc, argv, "--channels", 3);
  const int rounds = parse_flag(argc, argv, "--rounds", 3);

  using Master = syncbn::sync::SyncMaster<Partial, Total>;
  Master master([](std::vector<std::pair<int, Partial>> parts) {
    // Reduce-add in replica order (deterministic), then mean and biased variance.
    Partial acc = std::move(parts.front().second);
    for (std::size_t p = 1; p < parts.size(); ++p) {
      for (std::size_t c = 0; c < acc.sum.size(); ++c) {
        acc.sum[c] += parts[p].second.sum[c];
        acc.ssum[c] += parts[p].second.ssum[c];
      }
      acc.count += parts[p].second.count;
    }
    Total total{{}, {}, acc.count};
    for (std::size_t c = 0; c < acc.sum.size(); ++c) {
      const double mean = acc.sum[c] / static_cast<double>(acc.count);
      total.mean.push_back(mean);
      total.var.push_back(acc.ssum[c] / static_cast<double>(acc.count) - mean * mean);
    }
    std::vector<std::pair<int, Total>> replies;
    for (const auto& part : parts) replies.emplace_back(part.first, total);
    return replies;
  });
  std::vector<Master::Pipe> pipes;
  for (int id = 1; id < k; ++id) pipes.push_back(master.register_slave(id));

  std::printf("comm_demo: %d replica threads, %d channels, %d rounds\n", k, channels, rounds);
  std::mutex print_mutex;
  std::vector<std::thread> threads;
  for (int id = 0; id < k; ++id) {
    threads.emplace_back([&, id] {
      for (int round = 1; round <= rounds; ++round) {
        // Replica `id` holds id + 1 samples with values round * (c + 1) + id + j.
        Partial mine;
        mine.count = id + 1;
        for (int c = 0; c < channels; ++c) {
          double s = 0, ss = 0;
          for (int j = 0; j <= id; ++j) {
            const double x = round * (c + 1) + id + j;
            s += x;
            ss += x * x;
          }
          mine.sum.push_back(s);
          mine.ssum.push_back(ss);
        }
        const Total got = id == 0 ? master.run_master(std::move(mine))
                                  : pipes[static_cast<std::size_t>(id - 1)].run_slave(std::move(mine));
        std::lock_guard<std::mutex> lock(print_mutex);
        std::printf("round %d replica %d: count %ld mean [", round, id, got.count);
        for (std::size_t c = 0; c < got.mean.size(); ++c) std::printf("%s%.4f", c ? ", " : "", got.mean[c]);
        std::printf("] var [");
        for (std::size_t c = 0; c < got.var.size(); ++c) std::printf("%s%.4f", c ? ", " : "", got.var[c]);
        std::printf("]\n");
      }
    });
  }
  for (auto& t : threads) t.join();
  std::printf("comm_demo: every replica received the same whole-batch statistics\n");
  return 0;
}
