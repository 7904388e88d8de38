// SmallBlockCache: per-thread free lists of small host blocks.

// Note [Small block cache]
// A batch-norm step allocates a few dozen small tensors per replica (the
// per-channel statistics, coefficients, gradient sums and their exchange
// replies: 0.5 to 8 KiB each). Tensors are 64-byte aligned, and glibc 2.36
// serves aligned requests outside its per-thread cache (tcache): every one
// took the malloc arena's lock and split a larger chunk, and a reply freed
// on another replica's thread contended for the lock of the arena it came
// from. A two-replica SyncBatchNorm1d(64) step spent about a fifth of its
// samples in glibc's locks, lock waits in the kernel and consolidation. So
// blocks below 64 KiB are kept per thread, by power-of-two size class, and
// reused without a lock; the thread that frees a block keeps it (as glibc's
// tcache does), at most 1 MiB per thread, and the rest goes back to the
// system. Larger blocks go to HostBlockCache (Note [Host block cache]).

#include "cpu/small_block_cache.hpp"

#include <bit>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define SYNCBN_SMALL_CACHE_ENABLED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SYNCBN_SMALL_CACHE_ENABLED 0
#endif
#endif
#ifndef SYNCBN_SMALL_CACHE_ENABLED
#define SYNCBN_SMALL_CACHE_ENABLED 1
#endif

namespace syncbn::cpu {
namespace {

constexpr std::align_val_t kAlign{64};

// The class of a block of n bytes: the smallest power of two from kMinBytes
// that holds n (class_bytes gives its size).
int size_class(std::size_t nbytes) noexcept {
  const std::size_t n = nbytes < SmallBlockCache::kMinBytes ? SmallBlockCache::kMinBytes : nbytes;
  return static_cast<int>(std::bit_width(n - 1)) - 6;
}

std::size_t class_bytes(int k) noexcept { return SmallBlockCache::kMinBytes << k; }

// Readable while the thread exits (trivially destructible): set once the
// thread's cache is destroyed, so that later frees on the thread go to the
// system rather than into a destroyed cache.
thread_local bool t_cache_gone = false;

struct ThreadCache {
  SmallBlockCache cache;
  ThreadCache() = default;
  ThreadCache(const ThreadCache&) = delete;
  ThreadCache& operator=(const ThreadCache&) = delete;
  ~ThreadCache() { t_cache_gone = true; }
};

}  // namespace

SmallBlockCache::~SmallBlockCache() {
  for (int k = 0; k < kClasses; ++k)
    for (Node* node = free_[static_cast<std::size_t>(k)]; node != nullptr;) {
      Node* next = node->next;
      ::operator delete(node, kAlign);
      node = next;
    }
}

void* SmallBlockCache::allocate(std::size_t nbytes) {
  const int k = size_class(nbytes);
  Node*& head = free_[static_cast<std::size_t>(k)];
  if (head != nullptr) {
    Node* node = head;
    head = node->next;
    kept_bytes_ -= class_bytes(k);
    return node;
  }
  return ::operator new(class_bytes(k), kAlign);
}

void SmallBlockCache::release(void* ptr, std::size_t nbytes) noexcept {
  const int k = size_class(nbytes);
  if (kept_bytes_ + class_bytes(k) > kKeptBytes) {
    ::operator delete(ptr, kAlign);
    return;
  }
  Node*& head = free_[static_cast<std::size_t>(k)];
  head = ::new (ptr) Node{head};
  kept_bytes_ += class_bytes(k);
}

namespace {

// The calling thread's cache; null once it was destroyed (the thread is
// exiting) and where caching is off.
SmallBlockCache* thread_cache() noexcept {
  if (!SYNCBN_SMALL_CACHE_ENABLED || t_cache_gone) return nullptr;
  thread_local ThreadCache mine;
  return &mine.cache;
}

}  // namespace

void* small_allocate(std::size_t nbytes) {
  if (SmallBlockCache* cache = thread_cache()) return cache->allocate(nbytes);
  return ::operator new(SYNCBN_SMALL_CACHE_ENABLED ? class_bytes(size_class(nbytes)) : nbytes, kAlign);
}

void small_release(void* ptr, std::size_t nbytes) noexcept {
  if (SmallBlockCache* cache = thread_cache()) {
    cache->release(ptr, nbytes);
    return;
  }
  ::operator delete(ptr, kAlign);
}

}  // namespace syncbn::cpu
