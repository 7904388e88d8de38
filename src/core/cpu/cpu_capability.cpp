// Which CPU level the kernels use (Note [CPU dispatch] in cpu/isa.hpp).
// Compiled for the baseline: it runs before any level is chosen.

#include <cstdlib>
#include <optional>
#include <string>

#include "cpu/cpu_features.hpp"
#include "cpu/kernel_set.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/error.hpp"

namespace syncbn::cpu {
namespace {

constexpr const char* kVariable = "SYNCBN_CPU_CAPABILITY";
constexpr Capability kAllLevels[] = {Capability::Baseline, Capability::AVX2, Capability::AVX512, Capability::Native};

const KernelSet* kernel_set_of(Capability level) {
  switch (level) {
#if SYNCBN_CPU_LEVEL_BASELINE
    case Capability::Baseline: return &baseline::kKernelSet;
#endif
#if SYNCBN_CPU_LEVEL_AVX2
    case Capability::AVX2: return &avx2::kKernelSet;
#endif
#if SYNCBN_CPU_LEVEL_AVX512
    case Capability::AVX512: return &avx512::kKernelSet;
#endif
#if SYNCBN_CPU_LEVEL_NATIVE
    case Capability::Native: return &native::kKernelSet;
#endif
    default: return nullptr;
  }
}

std::string names(const std::vector<Capability>& levels) {
  std::string out;
  for (Capability level : levels) {
    if (!out.empty()) out += ", ";
    out += capability_name(level);
  }
  return out;
}

// The decision, made once per process: a level, or the error every CPU
// kernel call then reports.
struct Choice {
  Capability level = Capability::Baseline;
  std::string error;
};

Choice choose() {
  const std::vector<Capability> compiled = compiled_capabilities();
  const char* forced = std::getenv(kVariable);
  if (forced == nullptr || *forced == '\0') {
    Choice best{compiled.front(), {}};
    for (Capability level : compiled)
      if (cpu_supports(level)) best.level = level;
    return best;
  }
  const std::string value = forced;
  std::optional<Capability> named;
  for (Capability level : kAllLevels)
    if (value == capability_name(level)) named = level;
  if (!named)
    return {Capability::Baseline, ::syncbn::detail::concat(kVariable, ": '", value,
                                                 "' is not a CPU level, expected one of this build's: ", names(compiled))};
  if (kernel_set_of(*named) == nullptr)
    return {Capability::Baseline, ::syncbn::detail::concat(kVariable, ": this build has no ", value,
                                                 " kernels, expected one of ", names(compiled))};
  if (!cpu_supports(*named))
    return {Capability::Baseline, ::syncbn::detail::concat(kVariable, ": this CPU cannot run the ", value,
                                                 " kernels, expected a level it supports among ", names(compiled))};
  return {*named, {}};
}

const Choice& choice() {
  static const Choice decided = choose();
  return decided;
}

}  // namespace

std::string_view capability_name(Capability level) noexcept {
  switch (level) {
    case Capability::Baseline: return "baseline";
    case Capability::AVX2: return "avx2";
    case Capability::AVX512: return "avx512";
    case Capability::Native: return "native";
  }
  return "unknown";
}

std::vector<Capability> compiled_capabilities() {
  std::vector<Capability> out;
  for (Capability level : kAllLevels)
    if (kernel_set_of(level) != nullptr) out.push_back(level);
  return out;
}

bool cpu_supports(Capability level) noexcept {
  switch (level) {
    case Capability::Baseline: return true;
    case Capability::AVX2: return detail::has_x86_64_v3();
    case Capability::AVX512: return detail::has_x86_64_v4();
    case Capability::Native: return true;
  }
  return false;
}

Capability active_capability() {
  const Choice& decided = choice();
  if (!decided.error.empty()) throw InvalidArgument(decided.error);
  return decided.level;
}

const KernelSet& active_kernel_set() {
  // The set is looked up per kernel call; after the first call this is a
  // guard check and a switch.
  return *kernel_set_of(active_capability());
}

}  // namespace syncbn::cpu
