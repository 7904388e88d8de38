#pragma once
// HostBlockCache: keeps freed large host blocks for reuse (Note [Host block cache]).

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace syncbn::cpu {

/// Counters of a HostBlockCache (for tests and diagnostics).
struct HostCacheStats {
  std::size_t cached_bytes = 0;  ///< bytes held in free lists now
  std::uint64_t hits = 0;        ///< large allocations served from the cache
  std::uint64_t misses = 0;      ///< large allocations that went to the system
};

/// 64-byte-aligned host allocations. Blocks of at least kMinCachedBytes are
/// rounded up to whole pages and, when freed, kept in a free list per size
/// (up to `capacity` bytes in all) instead of going back to the system.
/// Thread-safe.
class HostBlockCache {
 public:
  static constexpr std::size_t kMinCachedBytes = 64 * 1024;
  static constexpr std::size_t kPage = 4096;
  static constexpr std::size_t kAlignment = 64;

  explicit HostBlockCache(std::size_t capacity) : capacity_(capacity) {}
  ~HostBlockCache();
  HostBlockCache(const HostBlockCache&) = delete;
  HostBlockCache& operator=(const HostBlockCache&) = delete;

  /// A block of at least `nbytes`; throws syncbn::Error when the system has none.
  void* allocate(std::size_t nbytes);
  /// Returns a block from allocate(nbytes); never throws.
  void release(void* ptr, std::size_t nbytes) noexcept;
  /// Gives every cached block back to the system.
  void clear() noexcept;
  HostCacheStats stats() const;

 private:
  static std::size_t rounded(std::size_t nbytes) noexcept { return (nbytes + kPage - 1) / kPage * kPage; }

  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;
  HostCacheStats stats_;
};

/// The process's host block cache used by the CPU backend (capacity 2 GiB;
/// caching is off under AddressSanitizer so that it sees every reuse).
HostBlockCache& host_block_cache();

}  // namespace syncbn::cpu
