// Prints the CPU kernel levels of this build of syncbn, the ones this CPU
// supports and the one in use, then runs a batch-norm kernel at that level.
//   cpu_info            (SYNCBN_CPU_CAPABILITY=baseline|avx2|avx512 forces a level)
// Exit status 0 when the kernels run, 1 when the level cannot be used.

#include <cstdio>
#include <string>

#include "syncbn/syncbn.hpp"

namespace {

std::string join(const std::vector<syncbn::cpu::Capability>& levels) {
  std::string out;
  for (auto level : levels) {
    if (!out.empty()) out += ' ';
    out += syncbn::cpu::capability_name(level);
  }
  return out;
}

}  // namespace

int main() {
  using namespace syncbn;
  std::vector<cpu::Capability> supported;
  for (auto level : {cpu::Capability::Baseline, cpu::Capability::AVX2, cpu::Capability::AVX512})
    if (cpu::cpu_supports(level)) supported.push_back(level);
  std::printf("compiled: %s\n", join(cpu::compiled_capabilities()).c_str());
  std::printf("supported: %s\n", join(supported).c_str());
  try {
    std::printf("active: %s\n", std::string(cpu::capability_name(cpu::active_capability())).c_str());
  } catch (const Error& e) {
    std::printf("active: error: %s\n", e.what());
  }
  try {
    const Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, Shape{3, 2});
    const auto moments = core::batch_norm_moments(x);
    const auto mean = moments.mean.to_vector<double>();
    std::printf("kernels: ok (channel means %g %g)\n", mean[0], mean[1]);
    return 0;
  } catch (const Error& e) {
    std::printf("kernels: error: %s\n", e.what());
    return 1;
  }
}
