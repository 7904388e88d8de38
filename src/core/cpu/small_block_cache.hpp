#pragma once
// SmallBlockCache: per-thread free lists of small host blocks (Note [Small
// block cache] in small_block_cache.cpp).

#include <array>
#include <cstddef>

namespace syncbn::cpu {

/// 64-byte-aligned host blocks below kMaxBytes, in power-of-two size classes
/// from 64 bytes. A freed block goes to the free list of its class on the
/// thread that frees it (up to kKeptBytes per thread) and is handed out
/// again by that thread's next request of the class. Not thread-safe: one
/// per thread (thread_small_blocks).
class SmallBlockCache {
 public:
  static constexpr std::size_t kMinBytes = 64;
  static constexpr std::size_t kMaxBytes = 64 * 1024;  // larger blocks: HostBlockCache
  static constexpr std::size_t kKeptBytes = std::size_t{1} << 20;

  SmallBlockCache() = default;
  ~SmallBlockCache();
  SmallBlockCache(const SmallBlockCache&) = delete;
  SmallBlockCache& operator=(const SmallBlockCache&) = delete;

  /// A block of at least `nbytes` (< kMaxBytes); throws std::bad_alloc when
  /// the system has none.
  void* allocate(std::size_t nbytes);
  /// Takes back a block from allocate(nbytes) of any thread's cache.
  void release(void* ptr, std::size_t nbytes) noexcept;
  /// Bytes held in the free lists.
  std::size_t kept_bytes() const noexcept { return kept_bytes_; }

 private:
  struct Node {
    Node* next;
  };
  static constexpr int kClasses = 11;  // 64 B .. 64 KiB
  std::array<Node*, kClasses> free_{};
  std::size_t kept_bytes_ = 0;
};

/// A block of at least `nbytes` (0 < nbytes < kMaxBytes) from the calling
/// thread's cache. Every such block has its class's size, also where the
/// thread has no cache (while it exits), since another thread's cache may
/// take it back; under AddressSanitizer nothing is cached and blocks have
/// their exact size, so that it sees every overrun and reuse.
void* small_allocate(std::size_t nbytes);
/// Takes back a block from small_allocate(nbytes), on any thread.
void small_release(void* ptr, std::size_t nbytes) noexcept;

}  // namespace syncbn::cpu
