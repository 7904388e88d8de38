// Configure-time probe of a CPU level's compiler flags: small constant
// vectors must keep their values. GCC 12 with -mavx512f (-march=x86-64-v4)
// at -O2 and above builds some of them as all ones (its SLP vectorizer),
// which syncbn's own code and tests hit; a level whose flags fail here is
// built only with its known workaround, if that passes (SyncbnCpuLevels.cmake).
// Exit code 0 means correct.

#include <cstdint>
#include <cstdio>
#include <vector>

[[gnu::noinline]] std::vector<std::int64_t> int64_pattern() { return {1, 1, 0, 0}; }
[[gnu::noinline]] std::vector<double> double_pattern() { return {1, 1, 0, 0}; }
[[gnu::noinline]] std::vector<int> int_pattern() { return {1, 1, 1, 1, 0, 0, 0, 0}; }
[[gnu::noinline]] std::vector<std::int64_t> chunk_sizes(std::int64_t n, int parts) {
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(parts), n / parts);
  for (std::int64_t i = 0; i < n % parts; ++i) ++sizes[static_cast<std::size_t>(i)];
  return sizes;
}

int main() {
  int wrong = 0;
  const auto a = int64_pattern();
  const auto b = double_pattern();
  const auto c = int_pattern();
  for (std::size_t i = 0; i < 4; ++i) wrong += a[i] != (i < 2 ? 1 : 0);
  for (std::size_t i = 0; i < 4; ++i) wrong += b[i] != (i < 2 ? 1.0 : 0.0);
  for (std::size_t i = 0; i < 8; ++i) wrong += c[i] != (i < 4 ? 1 : 0);
  wrong += chunk_sizes(2, 4) != std::vector<std::int64_t>{1, 1, 0, 0};
  wrong += chunk_sizes(10, 4) != std::vector<std::int64_t>{3, 3, 2, 2};
  std::printf("%d wrong values\n", wrong);
  return wrong == 0 ? 0 : 1;
}
