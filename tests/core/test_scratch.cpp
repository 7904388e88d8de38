// ScratchScope: the CPU kernels' per-thread scratch arena. White-box test of
// a CPU backend component (includes a private header).

#include <catch2/catch.hpp>

#include <cstdint>
#include <thread>
#include <vector>

#include "cpu/scratch.hpp"
#include "syncbn/error.hpp"

using syncbn::cpu::ScratchScope;

namespace {

bool aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

}  // namespace

TEST_CASE("Scratch arrays are 64-byte aligned and keep their values while their scope is open", "[tensor]") {
  const ScratchScope scope;
  std::vector<double*> arrays;
  // Past the first block (64 KiB): earlier arrays must stay where they are.
  for (std::size_t k = 0; k < 40; ++k) {
    double* a = ScratchScope::take<double>(1000 + k);
    CHECK(aligned(a));
    for (std::size_t i = 0; i < 1000 + k; ++i) a[i] = static_cast<double>(k * 100000 + i);
    arrays.push_back(a);
  }
  for (std::size_t k = 0; k < arrays.size(); ++k)
    for (std::size_t i = 0; i < 1000 + k; i += 97) REQUIRE(arrays[k][i] == static_cast<double>(k * 100000 + i));
}

TEST_CASE("A closed scope gives its scratch back to the next one, and an inner scope only its own", "[tensor]") {
  void* first = nullptr;
  {
    const ScratchScope scope;
    first = ScratchScope::take<float>(300);
  }
  const ScratchScope outer;
  float* a = ScratchScope::take<float>(300);
  CHECK(static_cast<void*>(a) == first);  // the same run, reused
  void* inner_first = nullptr;
  {
    const ScratchScope inner;
    inner_first = ScratchScope::take<float>(10);
    CHECK(inner_first != static_cast<void*>(a));
  }
  CHECK(ScratchScope::take<float>(10) == inner_first);  // the inner scope's run is free again
}

TEST_CASE("Taking scratch outside any scope is refused", "[tensor]") {
  CHECK_THROWS_AS(ScratchScope::take<double>(8), syncbn::Error);
}

TEST_CASE("Each thread has its own scratch", "[tensor]") {
  const ScratchScope scope;
  double* mine = ScratchScope::take<double>(16);
  double* theirs = nullptr;
  std::thread other([&] {
    const ScratchScope their_scope;
    theirs = ScratchScope::take<double>(16);
    for (int i = 0; i < 16; ++i) theirs[i] = -1.0;
  });
  for (int i = 0; i < 16; ++i) mine[i] = 1.0;
  other.join();
  CHECK(theirs != mine);
  for (int i = 0; i < 16; ++i) CHECK(mine[i] == 1.0);
}

TEST_CASE("A thread that exits passes its scratch arena to the next thread instead of freeing it", "[tensor]") {
  auto use_scratch = [] {
    const ScratchScope scope;
    double* p = ScratchScope::take<double>(1024);
    for (int i = 0; i < 1024; ++i) p[i] = 0.5;
  };
  std::thread(use_scratch).join();  // leaves at least one arena idle
  const std::size_t before = ScratchScope::arenas_created();
  for (int round = 0; round < 8; ++round) std::thread(use_scratch).join();
  CHECK(ScratchScope::arenas_created() == before);
}
