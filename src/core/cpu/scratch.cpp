#include "cpu/scratch.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "syncbn/error.hpp"

namespace syncbn::cpu {
namespace {

// Note [Kernel scratch]
// The batch-norm kernels need a few per-channel arrays per call (1-3 KiB
// for 64 channels). From malloc, each such request of 1 KiB or more made
// glibc consolidate its fast bins (the small blocks that tensors' shared
// pointers and the layers' bookkeeping free on every pass), and aligned
// requests went through memalign: at 64 channels that was a fifth of a
// batch-norm step. The arena hands out 64-byte-aligned runs of its blocks
// instead; a scope gives back what it took when it closes; once every scope
// of the thread has closed, several blocks are merged into one of their
// total size, so the steady state is one block and no allocation. Each
// replica thread has its own arena, which also keeps the replicas' scratch
// apart. An arena outlives its thread: at the thread's exit it goes to a
// process-wide list, and the next thread to need scratch takes it from
// there. Threads that come and go (an application's own, or a runner that
// starts threads per call, as parallel_apply did) then reuse warm memory:
// when each thread freed its arena, glibc trimmed the thread's heap on
// every exit and the next thread faulted the pages in again, which made a
// synchronized layer across two processes (bench_dist_exchange, 1024
// channels, threads per call) take 450-740 instead of 180-240 us per step.
// The memory kept is that of the most threads that ever held scratch at
// once.
constexpr std::size_t kAlign = 64;
constexpr std::size_t kFirstBlock = 64 * 1024;

struct Arena {
  struct Block {
    std::byte* data;
    std::size_t size;
  };
  std::vector<Block> blocks;
  std::size_t block = 0;   // where the next run starts
  std::size_t offset = 0;
  int scopes = 0;

  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() {
    for (const Block& b : blocks) ::operator delete[](b.data, std::align_val_t{kAlign});
  }

  void* take(std::size_t bytes) {
    bytes = (std::max<std::size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
    for (; block < blocks.size(); ++block, offset = 0) {
      if (offset + bytes <= blocks[block].size) {
        std::byte* at = blocks[block].data + offset;
        offset += bytes;
        return at;
      }
    }
    const std::size_t size = std::max(bytes, blocks.empty() ? kFirstBlock : 2 * blocks.back().size);
    void* data = ::operator new[](size, std::align_val_t{kAlign}, std::nothrow);
    SYNCBN_CHECK(data != nullptr, "CPU kernel scratch: no memory for ", size, " bytes, expected the system to have it");
    blocks.push_back({static_cast<std::byte*>(data), size});
    block = blocks.size() - 1;
    offset = bytes;
    return data;
  }

  // Back to (b, o); with no scope left, several blocks become one.
  void rewind(std::size_t b, std::size_t o) noexcept {
    block = b;
    offset = o;
    if (scopes > 0 || blocks.size() < 2) return;
    std::size_t total = 0;
    for (const Block& each : blocks) total += each.size;
    void* data = ::operator new[](total, std::align_val_t{kAlign}, std::nothrow);
    if (data == nullptr) return;  // keep the blocks: still correct
    for (const Block& each : blocks) ::operator delete[](each.data, std::align_val_t{kAlign});
    blocks.assign(1, Block{static_cast<std::byte*>(data), total});
  }
};

// The arenas of exited threads, for the next threads. Never destroyed:
// threads may exit after static destruction (the arenas stay reachable
// through it, so leak checkers do not count them).
struct ArenaList {
  std::mutex mutex;
  std::vector<std::unique_ptr<Arena>> idle;
  std::atomic<std::size_t> created{0};
};

ArenaList& arena_list() {
  static ArenaList* const list = new ArenaList;
  return *list;
}

// The calling thread's arena, taken from the list (or made) at its first
// use and put back when the thread exits.
class ThreadArena {
 public:
  ThreadArena() = default;
  ThreadArena(const ThreadArena&) = delete;
  ThreadArena& operator=(const ThreadArena&) = delete;
  ~ThreadArena() {
    if (!arena_) return;
    ArenaList& list = arena_list();
    try {
      const std::lock_guard lock(list.mutex);
      list.idle.push_back(std::move(arena_));
    } catch (...) {
      // No memory to keep it listed: it is freed with this thread instead.
    }
  }
  Arena& get() {
    if (!arena_) {
      ArenaList& list = arena_list();
      {
        const std::lock_guard lock(list.mutex);
        if (!list.idle.empty()) {
          arena_ = std::move(list.idle.back());
          list.idle.pop_back();
        }
      }
      if (!arena_) {
        arena_ = std::make_unique<Arena>();
        list.created.fetch_add(1, std::memory_order_relaxed);
      }
    }
    return *arena_;
  }

 private:
  std::unique_ptr<Arena> arena_;
};

Arena& arena() {
  thread_local ThreadArena mine;
  return mine.get();
}

}  // namespace

ScratchScope::ScratchScope() noexcept {
  Arena& a = arena();
  block_ = a.block;
  offset_ = a.offset;
  ++a.scopes;
}

ScratchScope::~ScratchScope() {
  Arena& a = arena();
  --a.scopes;
  a.rewind(block_, offset_);
}

std::size_t ScratchScope::arenas_created() noexcept {
  return arena_list().created.load(std::memory_order_relaxed);
}

void* ScratchScope::allocate(std::size_t bytes) {
  Arena& a = arena();
  SYNCBN_CHECK(a.scopes > 0, "CPU kernel scratch: taken outside a ScratchScope, expected an open scope");
  return a.take(bytes);
}

}  // namespace syncbn::cpu
