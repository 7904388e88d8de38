// bench_sync_master: time per SyncMaster round for K replica threads that
// exchange per-channel (sum, ssum, count) partials and receive (mean, inv_std).
//
//   bench_sync_master [--threads 2,4,8] [--channels 1,256] [--rounds 100000]
//                     [--warmup 2000] [--reps 5] [--policies adaptive,blocking,spin,fixed]
//                     [--spin-us 5] [--yield-us 200]
//
// Each repetition starts K threads that run `warmup` untimed rounds, then
// `rounds` timed rounds back to back; the master thread's wall time divided by
// `rounds` is one sample. Every reply of the first 100 rounds is checked
// against a float64 reference (#wrong). Policies:
//   adaptive  the default WaitPolicy (spin, then yield, then block);
//   blocking  a plain mutex + condition variable wait;
//   spin      pure busy-polling, also when threads outnumber cores (capped at
//             2000 rounds);
//   fixed     --spin-us / --yield-us without dropping the spin phase when
//             threads outnumber cores (what the adaptation saves).

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/sync/sync_master.hpp"

namespace {

using namespace std::chrono;
using syncbn::sync::SyncMaster;
using syncbn::sync::SyncOptions;
using syncbn::sync::WaitPolicy;

struct Partial {
  std::vector<double> sum, ssum;
  std::int64_t count = 0;
};
struct Stats {
  std::vector<double> mean, inv_std;
};
using Master = SyncMaster<Partial, Stats>;

std::vector<std::pair<int, Stats>> reduce(std::vector<std::pair<int, Partial>> parts) {
  Partial acc = std::move(parts.front().second);
  for (std::size_t p = 1; p < parts.size(); ++p) {
    for (std::size_t c = 0; c < acc.sum.size(); ++c) {
      acc.sum[c] += parts[p].second.sum[c];
      acc.ssum[c] += parts[p].second.ssum[c];
    }
    acc.count += parts[p].second.count;
  }
  const std::size_t channels = acc.sum.size();
  Stats s{std::vector<double>(channels), std::vector<double>(channels)};
  const double inv_n = 1.0 / static_cast<double>(acc.count);
  for (std::size_t c = 0; c < channels; ++c) {
    const double mean = acc.sum[c] * inv_n;
    s.mean[c] = mean;
    s.inv_std[c] = 1.0 / std::sqrt(acc.ssum[c] * inv_n - mean * mean + 1e-5);
  }
  std::vector<std::pair<int, Stats>> replies;
  replies.reserve(parts.size());
  for (const auto& part : parts) replies.emplace_back(part.first, s);
  return replies;
}

Partial payload(int id, std::size_t channels) {
  Partial p;
  p.count = 16 + id;
  for (std::size_t c = 0; c < channels; ++c) {
    // Every sample of replica `id`, channel c is x = 0.5 + c + id plus noise of variance 1 + id.
    const double x = 0.5 + static_cast<double>(c) + id;
    p.sum.push_back(static_cast<double>(p.count) * x);
    p.ssum.push_back(static_cast<double>(p.count) * (x * x + 1.0 + id));
  }
  return p;
}

WaitPolicy policy_named(const std::string& name, long spin_us, long yield_us) {
  if (name == "blocking") return WaitPolicy::blocking();
  if (name == "spin") return WaitPolicy{seconds{3600}, {}, false};
  if (name == "fixed") return WaitPolicy{microseconds{spin_us}, microseconds{yield_us}, false};
  if (name != "adaptive") {
    std::fprintf(stderr, "--policies: expected adaptive, blocking, spin or fixed, got '%s'\n", name.c_str());
    std::exit(2);
  }
  return WaitPolicy{microseconds{spin_us}, microseconds{yield_us}, true};
}

struct Sample {
  double us_per_round = 0;
  long wrong = 0;
};

Sample run_once(int k, std::size_t channels, long warmup, long rounds, const WaitPolicy& policy) {
  Master master(reduce, SyncOptions{"bench", milliseconds{600000}, policy});
  std::vector<Master::Pipe> pipes;
  for (int id = 1; id < k; ++id) pipes.push_back(master.register_slave(id));
  std::vector<Partial> parts;
  for (int id = 0; id < k; ++id) parts.push_back(payload(id, channels));
  const Stats want = reduce([&] {
                       std::vector<std::pair<int, Partial>> v;
                       for (int id = 0; id < k; ++id) v.emplace_back(id, parts[static_cast<std::size_t>(id)]);
                       return v;
                     }())
                         .front()
                         .second;

  std::vector<long> wrong(static_cast<std::size_t>(k), 0);
  double seconds_taken = 0;
  auto body = [&](int id) {
    auto exchange = [&] {
      Partial mine = parts[static_cast<std::size_t>(id)];
      return id == 0 ? master.run_master(std::move(mine)) : pipes[static_cast<std::size_t>(id - 1)].run_slave(std::move(mine));
    };
    for (long r = 0; r < warmup; ++r) {
      const Stats got = exchange();
      if (r < 100 && (got.mean != want.mean || got.inv_std != want.inv_std)) ++wrong[static_cast<std::size_t>(id)];
    }
    const auto start = steady_clock::now();
    for (long r = 0; r < rounds; ++r) exchange();
    if (id == 0) seconds_taken = duration<double>(steady_clock::now() - start).count();
  };
  std::vector<std::thread> threads;
  for (int id = 1; id < k; ++id) threads.emplace_back(body, id);
  body(0);
  for (auto& t : threads) t.join();
  long total_wrong = 0;
  for (long w : wrong) total_wrong += w;
  return {seconds_taken * 1e6 / static_cast<double>(rounds), total_wrong};
}

}  // namespace

int main(int argc, char** argv) {
  using syncbn::bench::flag;
  const auto threads = syncbn::bench::int_list(flag(argc, argv, "--threads", "2,4,8"), "--threads");
  const auto channels = syncbn::bench::int_list(flag(argc, argv, "--channels", "1,256"), "--channels");
  const long rounds = std::stol(flag(argc, argv, "--rounds", "100000"));
  const long warmup = std::max(100L, std::stol(flag(argc, argv, "--warmup", "2000")));
  const long reps = std::stol(flag(argc, argv, "--reps", "5"));
  const long spin_us = std::stol(flag(argc, argv, "--spin-us", "5"));
  const long yield_us = std::stol(flag(argc, argv, "--yield-us", "200"));
  const auto policies = syncbn::bench::str_list(flag(argc, argv, "--policies", "adaptive,blocking"));

  std::printf("# bench_sync_master: %u hardware threads, %ld rounds x %ld reps, warm-up %ld rounds\n",
              std::thread::hardware_concurrency(), rounds, reps, warmup);
  std::printf("%s\n", syncbn::bench::cpu_level_line().c_str());
  std::printf("%3s %8s %-9s %12s %10s %10s %12s %7s\n", "K", "channels", "policy", "median_us", "min_us", "max_us",
              "rounds/s", "#wrong");
  for (const long k : threads) {
    for (const long c : channels) {
      for (const auto& name : policies) {
        const long n = name == "spin" ? std::min(rounds, 2000L) : rounds;
        std::vector<double> samples;
        long wrong = 0;
        for (long rep = 0; rep < reps; ++rep) {
          const Sample s = run_once(static_cast<int>(k), static_cast<std::size_t>(c), name == "spin" ? 100 : warmup, n,
                                    policy_named(name, spin_us, yield_us));
          samples.push_back(s.us_per_round);
          wrong += s.wrong;
        }
        const auto sum = syncbn::bench::summarize(samples);
        std::printf("%3ld %8ld %-9s %12.2f %10.2f %10.2f %12.0f %7ld\n", k, c, name.c_str(), sum.median, sum.min, sum.max,
                    1e6 / sum.median, wrong);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
