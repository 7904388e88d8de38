#pragma once
// Per-thread scratch memory for the CPU kernels' per-channel arrays (term
// tables, column partials, per-channel sums): a kernel opens a ScratchScope
// and takes arrays from it, and they are gone when the scope closes. The
// memory is a per-thread arena of 64-byte-aligned blocks that stays with
// the thread, and passes to a later thread when it exits, so that a kernel
// call costs no allocation once the threads have seen their largest channel
// count (Note [Kernel scratch] in scratch.cpp).

#include <cstddef>
#include <type_traits>

namespace syncbn::cpu {

class ScratchScope {
 public:
  ScratchScope() noexcept;
  ~ScratchScope();
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;

  /// Uninitialised room for n values of U, 64-byte aligned, valid until
  /// this scope closes. Throws syncbn::Error when the system has no memory.
  template <class U>
  static U* take(std::size_t n) {
    static_assert(std::is_trivially_default_constructible_v<U> && std::is_trivially_destructible_v<U>);
    return static_cast<U*>(allocate(n * sizeof(U)));
  }

  /// How many arenas the process has made: one per thread that held scratch
  /// at the same time as others, not one per thread (for tests).
  static std::size_t arenas_created() noexcept;

 private:
  static void* allocate(std::size_t bytes);
  std::size_t block_;
  std::size_t offset_;
};

}  // namespace syncbn::cpu
