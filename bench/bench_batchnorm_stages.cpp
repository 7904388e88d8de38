// bench_batchnorm_stages: the four CPU stages of a training batch norm,
// timed one by one, for the forms whose whole-layer figures
// bench_batchnorm_forms compares:
//
//   bench_batchnorm_stages [--shapes 64x256x14x14,256x1024] [--rounds 9] [--calls 25]
//                          [--variants bn,cl-bn,relu-mask,relu-recompute,cl-relu-mask]
//
// Stages (the core::batch_norm_* calls nn::BatchNorm makes per forward and
// backward): moments (batch_norm_moments), apply (batch_norm_apply),
// sums (batch_norm_grad_sums), bapply (batch_norm_backward_apply).
// Variants: bn (NCHW), cl-bn (the same batch channels-last), relu-mask (NCHW
// with the fused relu, its mask kept by the forward), relu-recompute (the
// fused relu recomputing z in both backward stages, as without the mask),
// cl-relu-mask (channels-last with the fused relu and its mask).
// A stage's time in a round is the fastest of --calls calls (the machine's
// other work only ever adds time); every round times every variant's stage
// in turn, and each ratio to bn is the median of the per-round ratios
// [min-max].

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/syncbn.hpp"

namespace {

using namespace syncbn;

// One variant's operands and its four stages.
struct Variant {
  std::string name;
  std::vector<std::function<void()>> stages;
};

const char* const kStageNames[] = {"moments", "apply", "sums", "bapply"};

Variant make_variant(const std::string& name, const Tensor& x_first, const Tensor& dy_first) {
  core::BatchNormForm form;
  bool mask = false;
  if (name == "cl-bn" || name == "cl-relu-mask") form.layout = core::ChannelLayout::Last;
  if (name == "relu-mask" || name == "relu-recompute" || name == "cl-relu-mask") {
    form.activation = core::Activation::relu();
    mask = name != "relu-recompute";
  }
  SYNCBN_CHECK(name == "bn" || name == "cl-bn" || name == "relu-mask" || name == "relu-recompute" ||
                   name == "cl-relu-mask",
               "bench_batchnorm_stages: --variants ", name,
               ", expected bn, cl-bn, relu-mask, relu-recompute or cl-relu-mask");
  const Tensor x = form.layout == core::ChannelLayout::Last ? core::to_channels_last(x_first) : x_first;
  const Tensor dy = form.layout == core::ChannelLayout::Last ? core::to_channels_last(dy_first) : dy_first;
  const core::ChannelMoments m = core::batch_norm_moments(x, form.layout);
  const core::BatchNormVariance v = core::batch_norm_variance(m, 1e-5, false);
  const std::int64_t c = x_first.size(1);
  const Tensor weight = Tensor::rand(Shape{c}, 3, DType::Float32, x.device(), 0.5, 1.5);
  const Tensor bias = Tensor::randn(Shape{c}, 4, DType::Float32, x.device());
  const Tensor coef = core::batch_norm_coefficients(m.mean, v.invstd, weight, bias, DType::Float32);
  const Tensor relu_mask = mask ? core::batch_norm_relu_mask(x, form) : Tensor();
  (void)core::batch_norm_apply(x, coef, form, relu_mask);  // fills the mask
  const core::ChannelGradSums sums = core::batch_norm_grad_sums(dy, x, coef, form, relu_mask);
  const Tensor bcoef = core::batch_norm_backward_coefficients(m.count, v.invstd, weight, sums, DType::Float32);
  Variant out{name, {}};
  out.stages.push_back([=] { (void)core::batch_norm_moments(x, form.layout); });
  out.stages.push_back([=] { (void)core::batch_norm_apply(x, coef, form, relu_mask); });
  out.stages.push_back([=] { (void)core::batch_norm_grad_sums(dy, x, coef, form, relu_mask); });
  out.stages.push_back([=] { (void)core::batch_norm_backward_apply(dy, x, coef, bcoef, form, relu_mask); });
  return out;
}

int run(int argc, char** argv) {
  using bench::flag;
  const auto shapes = bench::str_list(flag(argc, argv, "--shapes", "64x256x14x14,256x1024"));
  const auto names = bench::str_list(flag(argc, argv, "--variants", "bn,cl-bn,relu-mask,relu-recompute"));
  const int rounds = std::stoi(flag(argc, argv, "--rounds", "9"));
  const int calls = std::stoi(flag(argc, argv, "--calls", "25"));
  SYNCBN_CHECK(!names.empty() && names.front() == "bn", "bench_batchnorm_stages: --variants ",
               flag(argc, argv, "--variants", ""), ", expected a list starting with bn (the reference)");
  std::printf("# bench_batchnorm_stages: %s, float32 on cpu:0, fastest of %d calls per stage, %d rounds\n",
              bench::cpu_level_line().c_str(), calls, rounds);
  std::printf("%-16s %-15s %-8s %10s %10s %18s\n", "shape", "variant", "stage", "ms", "GB/s", "ratio to bn [range]");
  for (const auto& text : shapes) {
    const Shape shape = bench::shape_of(text, "--shapes");
    const Tensor x = Tensor::randn(shape, 1, DType::Float32, Device::cpu(), 0.5, 2.0);
    const Tensor dy = Tensor::randn(shape, 2, DType::Float32, Device::cpu());
    std::vector<Variant> variants;
    for (const auto& name : names) variants.push_back(make_variant(name, x, dy));
    // times[v][s][round]
    std::vector<std::vector<std::vector<double>>> times(variants.size(), std::vector<std::vector<double>>(4));
    for (int r = 0; r < rounds; ++r)
      for (std::size_t s = 0; s < 4; ++s)
        for (std::size_t v = 0; v < variants.size(); ++v)
          times[v][s].push_back(bench::fastest_seconds(variants[v].stages[s], calls));
    // Bytes each stage reads and writes: moments x; apply x, y; sums dy, x;
    // bapply dy, x, dx (the mask's thirty-second of x left out).
    const double tensor_bytes = static_cast<double>(shape.numel()) * 4.0;
    const double passes[] = {1, 2, 2, 3};
    for (std::size_t v = 0; v < variants.size(); ++v) {
      std::vector<double> total_ratio;
      for (std::size_t s = 0; s < 4; ++s) {
        std::vector<double> ratios;
        for (int r = 0; r < rounds; ++r) {
          const auto i = static_cast<std::size_t>(r);
          ratios.push_back(times[v][s][i] / times[0][s][i]);
        }
        const auto t = bench::summarize(times[v][s]);
        const auto q = bench::summarize(ratios);
        std::printf("%-16s %-15s %-8s %10.4f %10.1f %8.3f [%.2f-%.2f]\n", text.c_str(), variants[v].name.c_str(),
                    kStageNames[s], t.median * 1e3, passes[s] * tensor_bytes / t.median / 1e9, q.median, q.min,
                    q.max);
      }
      for (int r = 0; r < rounds; ++r) {
        const auto i = static_cast<std::size_t>(r);
        double mine = 0, reference = 0;
        for (std::size_t s = 0; s < 4; ++s) {
          mine += times[v][s][i];
          reference += times[0][s][i];
        }
        total_ratio.push_back(mine / reference);
      }
      const auto q = bench::summarize(total_ratio);
      std::printf("%-16s %-15s %-8s %10s %10s %8.3f [%.2f-%.2f]\n", text.c_str(), variants[v].name.c_str(), "all",
                  "", "", q.median, q.min, q.max);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_batchnorm_stages: %s\n", e.what());
    return 1;
  }
}
