// The host buffers of a layer synchronized across processes (Note [Host
// staging across processes] in comm/stats_exchange.cpp, Note [Buffers kept
// between collectives] in distributed/mpi.cpp): once a step has run, further
// steps allocate no host buffer of a page or more. Fresh buffers every step
// made glibc grow and trim the thread's heap each time, several times the
// cost of the collectives themselves.
//
// Counted by replacing the global operator new of this test binary: every
// allocation through std::allocator (the vectors that held the packed rows,
// the ranks' rows and the sums) passes through it, while tensors take
// aligned blocks from their caches and MPI allocates with malloc, so a count
// above zero is a vector allocated per step. Sanitizer builds replace
// operator new themselves, so there the case is not built.

#include <catch2/catch.hpp>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SYNCBN_COUNT_NEW 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SYNCBN_COUNT_NEW 0
#endif
#endif
#ifndef SYNCBN_COUNT_NEW
#define SYNCBN_COUNT_NEW 1
#endif

#if SYNCBN_COUNT_NEW

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <numeric>
#include <vector>

#include "mpi_world.hpp"
#include "support/seeds.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"
#include "syncbn/parallel/replicate.hpp"

namespace {

constexpr std::size_t kPage = 4096;
std::atomic<bool> g_counting{false};
std::atomic<std::int64_t> g_large_allocations{0};

}  // namespace

void* operator new(std::size_t bytes) {
  if (bytes >= kPage && g_counting.load(std::memory_order_relaxed))
    g_large_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(bytes == 0 ? 1 : bytes)) return p;
  throw std::bad_alloc();
}
// GCC 12 takes the replacement's free() for a mismatch with operator new.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

using namespace syncbn;
using namespace std::chrono_literals;

TEST_CASE("A layer synchronized across processes allocates no host buffers per step once it has run",
          "[distributed][mpi]") {
  const int replicas = GENERATE(0, 2);  // 0: the layer alone, not replicated
  constexpr std::int64_t kChannels = 1024;  // 8 KiB per vector: each packed buffer spans pages
  std::vector<int> ranks(static_cast<std::size_t>(syncbn::testing::mpi_session().world()->size()));
  std::iota(ranks.begin(), ranks.end(), 0);
  const auto group = syncbn::testing::mpi_session().new_group(ranks, 30s);
  CAPTURE(replicas, group->rank(), syncbn::testing::kSeed);

  nn::SyncBatchNorm1d layer(kChannels, nn::BatchNormOptions{}, 30s, group);
  std::vector<Device> devices;
  for (int k = 0; k < replicas; ++k) devices.push_back(Device::cpu(k));
  std::vector<Tensor> inputs, grads;
  for (int k = 0; k < std::max(replicas, 1); ++k) {
    const auto seed = syncbn::testing::kSeed + static_cast<std::uint64_t>(k);
    inputs.push_back(Tensor::randn(Shape{4, kChannels}, seed, DType::Float32, Device::cpu(k)));
    grads.push_back(Tensor::randn(Shape{4, kChannels}, seed + 100, DType::Float32, Device::cpu(k)));
  }
  std::unique_ptr<parallel::Replication> replication;
  if (replicas > 0) replication = std::make_unique<parallel::Replication>(parallel::replicate(layer, devices));
  const auto step = [&] {
    if (replication) {
      parallel::parallel_apply(*replication, inputs);
      parallel::parallel_backward(*replication, grads);
    } else {
      layer.forward(inputs[0]);
      layer.backward(grads[0]);
    }
  };
  const std::int64_t calls_before = group->calls();
  step();  // the first step sizes the buffers
  step();
  g_large_allocations = 0;
  g_counting = true;
  for (int i = 0; i < 5; ++i) step();
  g_counting = false;
  CHECK(g_large_allocations.load() == 0);
  // The steps did exchange across the processes: a forward and a backward collective each at least.
  CHECK(group->calls() - calls_before >= 2 * 7);
}

#endif  // SYNCBN_COUNT_NEW
