// bench_read_orders: how fast one core reads a pair of (N, C, H, W) float32
// tensors in the orders the batch-norm gradient sums walk them, with no
// arithmetic but one add per value: the memory roof of each order
// (docs/performance.md, "Channels-last gradient sums: the memory's share").
//
//   bench_read_orders [--shape 64x256x14x14] [--rounds 9] [--calls 25] [--tile 64]
//
// Orders (each sums every channel of both tensors, per channel):
//   stream      both tensors front to back, into one sum each: the roof
//   nchw        channel-major: per sample and channel, a run of H*W values
//               (how the NCHW kernels read)
//   nhwc-tiles  channels-last rows of C values, in tiles of --tile rows, each
//               tile swept by blocks of 32 channels whose sums stay in
//               registers
//   nhwc-tiles-pf  the same, each line asked for a tile ahead into L2 (how
//               the channels-last kernels read)
//   nhwc-rows   channels-last rows front to back, the sums in a per-channel
//               array re-read and re-written every row
// A round times each order as the fastest of --calls calls, the orders in
// turn; the table gives the median over rounds and each order's median
// ratio to nchw with its range.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.hpp"

namespace {

using syncbn::Shape;
namespace bench = syncbn::bench;

// Eight floats (AVX2: the kernels need it, main checks); eight independent
// sums per loop keep the adds off the critical path, so each order runs at
// the speed its reads arrive.
using F8 = float __attribute__((vector_size(32)));
#define AVX2 __attribute__((target("avx2")))

AVX2 F8 load8(const float* p) {
  F8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

AVX2 float lanes_sum(F8 v) {
  float s = 0;
  for (int e = 0; e < 8; ++e) s += v[e];
  return s;
}

struct Pair {
  const float* a;
  const float* b;
};

[[gnu::noinline]] AVX2 float read_stream(Pair p, std::int64_t count) {
  F8 s[8] = {};
  std::int64_t i = 0;
  for (; i + 32 <= count; i += 32)
    for (int k = 0; k < 4; ++k) {
      s[k] += load8(p.a + i + 8 * k);
      s[4 + k] += load8(p.b + i + 8 * k);
    }
  float rest = 0;
  for (; i < count; ++i) rest += p.a[i] + p.b[i];
  F8 t = {};
  for (const F8& v : s) t += v;
  return lanes_sum(t) + rest;
}

[[gnu::noinline]] AVX2 void read_nchw(Pair p, std::int64_t n, std::int64_t c, std::int64_t l, float* sums) {
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const float* a = p.a + (i * c + j) * l;
      const float* b = p.b + (i * c + j) * l;
      F8 s[8] = {};
      std::int64_t k = 0;
      for (; k + 32 <= l; k += 32)
        for (int q = 0; q < 4; ++q) {
          s[q] += load8(a + k + 8 * q);
          s[4 + q] += load8(b + k + 8 * q);
        }
      float rest = 0;
      for (; k < l; ++k) rest += a[k] + b[k];
      F8 t = {};
      for (const F8& v : s) t += v;
      sums[j] += lanes_sum(t) + rest;
    }
}

// Channels-last, tiles of `tile` rows, 32-channel blocks (c a multiple of
// 32); with Prefetch, each 64-byte line is asked for `tile` rows ahead into
// L2, as the kernels do (Note [Prefetching the column sums]).
template <bool Prefetch>
[[gnu::noinline]] AVX2 void read_nhwc_tiles(Pair p, std::int64_t rows, std::int64_t c, std::int64_t tile, float* sums) {
  for (std::int64_t i0 = 0; i0 < rows; i0 += tile) {
    const std::int64_t i1 = std::min(rows, i0 + tile);
    for (std::int64_t j = 0; j < c; j += 32) {
      F8 sa[4] = {}, sb[4] = {};
      for (std::int64_t i = i0; i < i1; ++i)
        for (int q = 0; q < 4; ++q) {
          if (Prefetch && q % 2 == 0 && i + tile < rows) {
            __builtin_prefetch(p.a + (i + tile) * c + j + 8 * q, 0, 2);
            __builtin_prefetch(p.b + (i + tile) * c + j + 8 * q, 0, 2);
          }
          sa[q] += load8(p.a + i * c + j + 8 * q);
          sb[q] += load8(p.b + i * c + j + 8 * q);
        }
      for (int q = 0; q < 4; ++q) {
        const F8 t = load8(sums + j + 8 * q) + sa[q] + sb[q];
        std::memcpy(sums + j + 8 * q, &t, sizeof t);
      }
    }
  }
}

// Channels-last rows in order, the sums in `part` (2c floats).
[[gnu::noinline]] AVX2 void read_nhwc_rows(Pair p, std::int64_t rows, std::int64_t c, float* part) {
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j + 8 <= c; j += 8) {
      F8 sa = load8(part + j) + load8(p.a + i * c + j);
      F8 sb = load8(part + c + j) + load8(p.b + i * c + j);
      std::memcpy(part + j, &sa, sizeof sa);
      std::memcpy(part + c + j, &sb, sizeof sb);
    }
}

}  // namespace

int main(int argc, char** argv) try {
  if (!__builtin_cpu_supports("avx2")) {
    std::fprintf(stderr, "bench_read_orders: expected a CPU with AVX2, this one has none\n");
    return 2;
  }
  const Shape shape = bench::shape_of(bench::flag(argc, argv, "--shape", "64x256x14x14"), "--shape");
  const int rounds = std::stoi(bench::flag(argc, argv, "--rounds", "9"));
  const int calls = std::stoi(bench::flag(argc, argv, "--calls", "25"));
  const std::int64_t tile = std::stol(bench::flag(argc, argv, "--tile", "64"));
  if (shape.rank() < 2 || rounds < 1 || calls < 1 || tile < 1) {
    std::fprintf(stderr, "bench_read_orders: expected --shape NxC[xHxW...], --rounds, --calls and --tile of at least 1\n");
    return 2;
  }
  const std::int64_t n = shape[0], c = shape[1], count = shape.numel(), l = count / (n * c);
  if (c % 32 != 0) {
    std::fprintf(stderr, "bench_read_orders: --shape's channels must be a multiple of 32, got %lld\n",
                 static_cast<long long>(c));
    return 2;
  }
  std::vector<float> a(static_cast<std::size_t>(count)), b(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<float>(i % 7) * 0.25f;
    b[i] = static_cast<float>(i % 5) * 0.5f;
  }
  const Pair p{a.data(), b.data()};
  std::vector<float> sums(static_cast<std::size_t>(2 * c));
  volatile float sink = 0;
  struct Order {
    const char* name;
    std::function<void()> run;
  };
  const std::vector<Order> orders = {
      {"nchw", [&] { read_nchw(p, n, c, l, sums.data()); }},
      {"stream", [&] { sink = sink + read_stream(p, count); }},
      {"nhwc-tiles", [&] { read_nhwc_tiles<false>(p, n * l, c, tile, sums.data()); }},
      {"nhwc-tiles-pf", [&] { read_nhwc_tiles<true>(p, n * l, c, tile, sums.data()); }},
      {"nhwc-rows", [&] { read_nhwc_rows(p, n * l, c, sums.data()); }},
  };
  std::vector<std::vector<double>> best(orders.size());
  for (int r = 0; r < rounds; ++r)
    for (std::size_t o = 0; o < orders.size(); ++o) best[o].push_back(bench::fastest_seconds(orders[o].run, calls));
  const double bytes = 2.0 * static_cast<double>(count) * sizeof(float);
  std::printf("# bench_read_orders: %s float32 x 2 (%.1f MiB), fastest of %d calls, %d rounds, tiles of %lld rows\n",
              shape.str().c_str(), bytes / (1 << 20), calls, rounds, static_cast<long long>(tile));
  std::printf("%-14s %10s %8s %s\n", "order", "ms", "GB/s", "ratio to nchw [range]");
  for (std::size_t o = 0; o < orders.size(); ++o) {
    std::vector<double> ratio;
    for (int r = 0; r < rounds; ++r) ratio.push_back(best[o][static_cast<std::size_t>(r)] / best[0][static_cast<std::size_t>(r)]);
    const auto t = bench::summarize(best[o]);
    const auto q = bench::summarize(ratio);
    std::printf("%-14s %10.4f %8.1f %.3f [%.2f-%.2f]\n", orders[o].name, t.median * 1e3, bytes / t.median / 1e9,
                q.median, q.min, q.max);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_read_orders: %s\n", e.what());
  return 1;
}
