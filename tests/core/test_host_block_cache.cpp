// HostBlockCache: large host blocks are reused, small ones and overflow are not.
// White-box test of a CPU backend component (includes a private header).

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>

#include "cpu/host_block_cache.hpp"

using syncbn::cpu::HostBlockCache;

TEST_CASE("A freed large block is handed out again for the same page-rounded size", "[tensor]") {
  HostBlockCache cache(std::size_t{1} << 24);
  void* a = cache.allocate(100000);
  std::memset(a, 1, 100000);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % HostBlockCache::kAlignment == 0);
  cache.release(a, 100000);
  CHECK(cache.stats().cached_bytes == 102400);  // 25 pages
  void* b = cache.allocate(100001);              // same page count
  CHECK(b == a);
  CHECK(cache.stats().hits == 1);
  CHECK(cache.stats().cached_bytes == 0);
  void* c = cache.allocate(200000);  // another size: a miss
  CHECK(c != a);
  CHECK(cache.stats().misses == 2);
  cache.release(b, 100001);
  cache.release(c, 200000);
}

TEST_CASE("Small blocks bypass the cache and the cache never exceeds its capacity", "[tensor]") {
  HostBlockCache cache(256 * 1024);
  cache.release(cache.allocate(1000), 1000);
  CHECK(cache.stats().cached_bytes == 0);
  void* a = cache.allocate(200 * 1024);
  void* b = cache.allocate(200 * 1024);
  cache.release(a, 200 * 1024);
  cache.release(b, 200 * 1024);  // would exceed 256 KiB: freed
  CHECK(cache.stats().cached_bytes == 200 * 1024);
  cache.clear();
  CHECK(cache.stats().cached_bytes == 0);
}
