#pragma once
// Small helpers shared by the plain benchmark harnesses in bench/: flag
// parsing, order statistics, the timing loop and the streaming reference
// kernel. Benchmarks never run in the test suite.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "syncbn/core/cpu.hpp"
#include "syncbn/core/shape.hpp"

namespace syncbn::bench {

/// Value of `--name V` (or the fallback).
inline std::string flag(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (name == argv[i]) return argv[i + 1];
  return fallback;
}

/// True when `--name` is present.
inline bool has_flag(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i)
    if (name == argv[i]) return true;
  return false;
}

/// Parses "a,b,c" as integers (exits with a message on a bad token).
inline std::vector<long> int_list(const std::string& text, const char* what) {
  std::vector<long> out;
  std::stringstream in(text);
  std::string token;
  while (std::getline(in, token, ',')) {
    char* end = nullptr;
    const long v = std::strtol(token.c_str(), &end, 10);
    if (token.empty() || *end != '\0' || v < 0) {
      std::fprintf(stderr, "%s: expected a comma-separated list of non-negative integers, got '%s'\n", what,
                   text.c_str());
      std::exit(2);
    }
    out.push_back(v);
  }
  return out;
}

/// "32x64x56x56" as a shape (exits with a message naming `what` on a bad
/// size).
inline Shape shape_of(std::string text, const char* what) {
  for (char& ch : text)
    if (ch == 'x') ch = ',';
  const auto dims = int_list(text, what);
  return Shape(std::vector<std::int64_t>(dims.begin(), dims.end()));
}

/// Auto's convolution engine choices so far, one "# auto:" line each (Note
/// [Choosing a convolution engine]): a layer on the slower engine shows here.
inline void print_conv_choices() {
  for (const auto& c : cpu::conv_engine_choices())
    std::printf("# auto: %s, %s: %s (im2col %.3f ms, onednn %.3f ms)\n", c.layer.c_str(), c.stage.c_str(),
                std::string(cpu::conv_engine_name(c.engine)).c_str(), c.im2col_ms, c.onednn_ms);
}

/// Splits "a,b,c".
inline std::vector<std::string> str_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string token;
  while (std::getline(in, token, ',')) out.push_back(token);
  return out;
}

/// Median, min and max of a sample.
struct Summary {
  double median = 0, min = 0, max = 0;
};

inline Summary summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  Summary s;
  if (v.empty()) return s;
  const std::size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.min = v.front();
  s.max = v.back();
  return s;
}

/// The fastest of `calls` timed calls of fn, after one untimed call (the
/// outputs' and scratch's first touch).
inline double fastest_seconds(const std::function<void()>& fn, int calls) {
  fn();
  double best = 1e30;
  for (int i = 0; i < calls; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

/// Median seconds per call of fn: `warmup` calls, then `reps` samples, each
/// repeating fn (followed by `settle`, e.g. a device synchronisation) until
/// at least min_s seconds have passed.
inline double median_seconds_per_call(const std::function<void()>& fn, double min_s, int reps, int warmup,
                                      const std::function<void()>& settle = [] {}) {
  using clock = std::chrono::steady_clock;
  for (int i = 0; i < warmup; ++i) fn();
  settle();
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) {
    long calls = 0;
    const auto start = clock::now();
    double elapsed = 0;
    do {
      fn();
      ++calls;
      settle();
      elapsed = std::chrono::duration<double>(clock::now() - start).count();
    } while (elapsed < min_s);
    samples.push_back(elapsed / static_cast<double>(calls));
  }
  return summarize(samples).median;
}

/// STREAM's copy kernel, the same-size bandwidth reference; noinline keeps
/// the compiler from eliding repeats.
[[gnu::noinline]] inline void stream_copy(float* __restrict dst, const float* __restrict src, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

/// "# CPU kernels: avx2 (this build: baseline avx2; this CPU: baseline avx2 avx512)":
/// the level the measured kernels ran at (Note [CPU dispatch]).
inline std::string cpu_level_line() {
  std::string line = "# CPU kernels: ";
  line += cpu::capability_name(cpu::active_capability());
  line += " (this build:";
  for (auto level : cpu::compiled_capabilities()) {
    line += ' ';
    line += cpu::capability_name(level);
  }
  line += "; this CPU:";
  for (auto level : {cpu::Capability::Baseline, cpu::Capability::AVX2, cpu::Capability::AVX512}) {
    if (!cpu::cpu_supports(level)) continue;
    line += ' ';
    line += cpu::capability_name(level);
  }
  line += ')';
  return line;
}

}  // namespace syncbn::bench
