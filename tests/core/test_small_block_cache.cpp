// SmallBlockCache: small host blocks kept per thread by size class. White-box
// test of a CPU backend component (includes a private header).

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu/small_block_cache.hpp"

using syncbn::cpu::SmallBlockCache;

namespace {

bool aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

}  // namespace

TEST_CASE("A small block is 64-byte aligned and holds its whole size class", "[tensor]") {
  SmallBlockCache cache;
  for (const std::size_t n : {1u, 63u, 64u, 65u, 1000u, 4096u, 40000u, 65535u}) {
    CAPTURE(n);
    void* p = cache.allocate(n);
    CHECK(aligned(p));
    // The class is the next power of two from 64 bytes: all of it is the
    // block's (a block freed under one size may serve another of its class).
    std::size_t whole = 64;
    while (whole < n) whole *= 2;
    std::memset(p, 0x5a, whole);
    cache.release(p, n);
  }
}

TEST_CASE("A freed small block serves the next request of its size class", "[tensor]") {
  SmallBlockCache cache;
  void* a = cache.allocate(100);
  cache.release(a, 100);
  CHECK(cache.kept_bytes() == 128);
  CHECK(cache.allocate(128) == a);  // the same class (65 to 128 bytes)
  CHECK(cache.kept_bytes() == 0);
  void* b = cache.allocate(129);  // the next class: a fresh block
  CHECK(b != a);
  cache.release(a, 128);
  cache.release(b, 129);
  CHECK(cache.kept_bytes() == 128 + 256);
}

TEST_CASE("A block freed on another thread's cache stays with that cache", "[tensor]") {
  SmallBlockCache mine;
  void* p = mine.allocate(512);
  void* served = nullptr;
  std::thread other([&] {
    SmallBlockCache theirs;
    theirs.release(p, 512);
    served = theirs.allocate(500);
    theirs.release(served, 500);
  });
  other.join();
  CHECK(served == p);
  CHECK(mine.kept_bytes() == 0);
}

TEST_CASE("A thread's small-block cache keeps at most its limit and frees the rest", "[tensor]") {
  SmallBlockCache cache;
  const std::size_t block = 32 * 1024;
  std::vector<void*> blocks;
  for (std::size_t i = 0; i < 2 * SmallBlockCache::kKeptBytes / block; ++i) blocks.push_back(cache.allocate(block));
  for (void* p : blocks) cache.release(p, block);
  CHECK(cache.kept_bytes() == SmallBlockCache::kKeptBytes);
}

TEST_CASE("small_allocate and small_release pair up across threads", "[tensor]") {
  std::vector<void*> blocks;
  for (const std::size_t n : {8u, 200u, 3000u, 60000u}) blocks.push_back(syncbn::cpu::small_allocate(n));
  std::thread([&] {
    const std::size_t sizes[] = {8, 200, 3000, 60000};
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      std::memset(blocks[i], 1, sizes[i]);
      syncbn::cpu::small_release(blocks[i], sizes[i]);
    }
    // Served again from this thread's cache (or the system under ASan).
    void* again = syncbn::cpu::small_allocate(3000);
    CHECK(aligned(again));
    std::memset(again, 2, 3000);
    syncbn::cpu::small_release(again, 3000);
  }).join();
}
