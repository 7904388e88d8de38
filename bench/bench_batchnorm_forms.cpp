// bench_batchnorm_forms: the batch-norm layer's other forms beside plain
// NCHW batch norm, training forward+backward, one replica:
//
//   bench_batchnorm_forms [--shapes 32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32]
//                         [--device cpu:0] [--rounds 5] [--min-ms 150] [--warmup 2] [--only VARIANT]
//   bench_batchnorm_forms --memory MODE [--blocks 4] [--shape 32x64x56x56]
//
// Rows per shape (time per forward+backward, ms):
//   bn          BatchNorm, channels-first (NCHW): the reference row;
//   bn,relu     BatchNorm then a separate ReLU layer;
//   fused-relu  BatchNorm with activation = relu (one layer, fused kernels);
//   inplace     activation = leaky_relu(0.01), inplace: output over the input;
//   cl-bn       BatchNorm on the same batch channels-last (NHWC, NDHWC);
//   cl-relu     channels-last with the fused relu.
// The variants are timed in turn within each of --rounds rounds, and each
// ratio to bn is the median of the per-round ratios [min-max], which this
// drifting VM needs. Targets: fused-relu / bn <= 1, cl-bn / bn <= 1.1.
//
// --memory MODE (bn-relu, fused or inplace) runs one forward+backward of
// --blocks blocks of [1x1 Conv2d -> batch norm with the activation] on one
// batch and prints the growth of the process's peak resident memory over
// the batch's own, beside the activation buffers the forward allocates and
// keeps for backward by construction; one process per mode
// (scripts/bench_batchnorm_forms.sh), as the peak never comes down.

#include <sys/resource.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/syncbn.hpp"

namespace {

using namespace syncbn;

std::shared_ptr<nn::BatchNorm> make_bn(int rank, std::int64_t c, nn::BatchNormOptions options) {
  if (rank <= 3) return std::make_shared<nn::BatchNorm1d>(c, options);
  if (rank == 4) return std::make_shared<nn::BatchNorm2d>(c, options);
  return std::make_shared<nn::BatchNorm3d>(c, options);
}

// Resident memory now (from /proc) and at its peak (getrusage), in MiB.
double resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * 4096.0 / (1024.0 * 1024.0);
}

double peak_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

int memory_run(const std::string& mode, int blocks, const Shape& shape) {
  SYNCBN_CHECK(mode == "bn-relu" || mode == "fused" || mode == "inplace", "bench_batchnorm_forms: --memory ", mode,
               ", expected bn-relu, fused or inplace");
  const std::int64_t c = shape[1];
  nn::Sequential net;
  for (int b = 0; b < blocks; ++b) {
    net.add(std::make_shared<nn::Conv2d>(c, c, nn::Size2{1, 1}));
    nn::BatchNormOptions options;
    if (mode == "fused") options.activation = nn::Activation::relu();
    if (mode == "inplace") {
      options.activation = nn::Activation::leaky_relu(0.01);
      options.inplace = true;
    }
    net.add(std::make_shared<nn::BatchNorm2d>(c, options));
    if (mode == "bn-relu") net.add(std::make_shared<nn::ReLU>());
  }
  const Tensor x = Tensor::randn(shape, 1, DType::Float32, Device::cpu(), 0.5, 2.0);
  const Tensor dy = Tensor::randn(shape, 2, DType::Float32, Device::cpu());
  const double before = resident_mib();
  const Tensor y = net.forward(x);
  const double after_forward = peak_mib();
  net.backward(dy);
  const double tensor_mib = static_cast<double>(shape.numel()) * 4.0 / (1024.0 * 1024.0);
  // The activation buffers the forward allocates and keeps for backward,
  // by construction: each conv output, kept by batch norm; unfused, also
  // each ReLU output (batch norm's own output is freed once ReLU has read
  // it); fused, each batch-norm output; in place, batch norm writes over
  // the conv output, so nothing more.
  const double kept = (mode == "inplace" ? 1.0 : 2.0) * blocks * tensor_mib;
  std::printf("%-8s blocks %d  batch %s (%.1f MiB per activation): peak growth forward %.1f MiB, "
              "forward+backward %.1f MiB; activations kept for backward by construction %.1f MiB\n",
              mode.c_str(), blocks, shape.str().c_str(), tensor_mib, after_forward - before, peak_mib() - before, kept);
  return 0;
}

struct Variant {
  std::string name;
  std::function<void()> step;
};

}  // namespace

static int run(int argc, char** argv) {
  using bench::flag;
  if (bench::has_flag(argc, argv, "--memory")) {
    return memory_run(flag(argc, argv, "--memory", ""), std::stoi(flag(argc, argv, "--blocks", "4")),
                      bench::shape_of(flag(argc, argv, "--shape", "32x64x56x56"), "--shape"));
  }
  const auto shapes = bench::str_list(flag(argc, argv, "--shapes", "32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32"));
  const Device device = Device::parse(flag(argc, argv, "--device", "cpu:0"));
  const int rounds = std::stoi(flag(argc, argv, "--rounds", "5"));
  const double min_s = std::stod(flag(argc, argv, "--min-ms", "150")) / 1e3;
  const int warmup = std::stoi(flag(argc, argv, "--warmup", "2"));
  const std::function<void()> settle = [device] { cuda::synchronize(device); };
  std::printf("# bench_batchnorm_forms: %s, float32, training forward+backward, %d rounds\n",
              bench::cpu_level_line().c_str(), rounds);
  std::printf("%-16s %-11s %10s %10s %18s\n", "shape", "what", "time_ms", "GB/s", "ratio to bn [range]");
  for (const auto& text : shapes) {
    const Shape shape = bench::shape_of(text, "--shapes");
    const std::int64_t c = shape[1];
    const double bytes = static_cast<double>(shape.numel()) * 4.0;
    const Tensor x = Tensor::randn(shape, 1, DType::Float32, Device::cpu(), 0.5, 2.0).to(device);
    const Tensor dy = Tensor::randn(shape, 2, DType::Float32, Device::cpu()).to(device);
    const Tensor x_last = core::to_channels_last(x), dy_last = core::to_channels_last(dy);
    // The in-place layer overwrites its input each call: its own copy, so
    // that the other variants keep normalising the same batch.
    const Tensor x_inplace = x.clone();

    auto layer = [&](nn::ChannelLayout layout, nn::Activation act, bool inplace) {
      nn::BatchNormOptions options;
      options.device = device;
      options.layout = layout;
      options.activation = act;
      options.inplace = inplace;
      return make_bn(shape.rank(), c, options);
    };
    auto bn = layer(nn::ChannelLayout::First, nn::Activation::identity(), false);
    auto bn_then = layer(nn::ChannelLayout::First, nn::Activation::identity(), false);
    auto relu = std::make_shared<nn::ReLU>();
    auto fused = layer(nn::ChannelLayout::First, nn::Activation::relu(), false);
    auto inplace = layer(nn::ChannelLayout::First, nn::Activation::leaky_relu(0.01), true);
    auto cl_bn = layer(nn::ChannelLayout::Last, nn::Activation::identity(), false);
    auto cl_relu = layer(nn::ChannelLayout::Last, nn::Activation::relu(), false);
    auto fwd_bwd = [](nn::Module& m, const Tensor& in, const Tensor& g) {
      m.forward(in);
      m.backward(g);
    };
    std::vector<Variant> variants{
        {"bn", [&] { fwd_bwd(*bn, x, dy); }},
        {"bn,relu",
         [&] {
           relu->forward(bn_then->forward(x));
           bn_then->backward(relu->backward(dy));
         }},
        {"fused-relu", [&] { fwd_bwd(*fused, x, dy); }},
        {"inplace", [&] { fwd_bwd(*inplace, x_inplace, dy); }},
        {"cl-bn", [&] { fwd_bwd(*cl_bn, x_last, dy_last); }},
        {"cl-relu", [&] { fwd_bwd(*cl_relu, x_last, dy_last); }},
    };
    if (bench::has_flag(argc, argv, "--only")) {  // one variant (and bn), e.g. under a profiler
      const std::string only = flag(argc, argv, "--only", "");
      std::erase_if(variants, [&](const Variant& v) { return v.name != "bn" && v.name != only; });
    }
    std::vector<std::vector<double>> times(variants.size());
    for (int r = 0; r < rounds; ++r)
      for (std::size_t v = 0; v < variants.size(); ++v)
        times[v].push_back(bench::median_seconds_per_call(variants[v].step, min_s, 1, warmup, settle));
    for (std::size_t v = 0; v < variants.size(); ++v) {
      std::vector<double> ratios;
      for (int r = 0; r < rounds; ++r) ratios.push_back(times[v][static_cast<std::size_t>(r)] / times[0][static_cast<std::size_t>(r)]);
      const auto t = bench::summarize(times[v]);
      const auto q = bench::summarize(ratios);
      std::printf("%-16s %-11s %10.3f %10.1f %8.3f [%.2f-%.2f]\n", text.c_str(), variants[v].name.c_str(),
                  t.median * 1e3, 8.0 * bytes / t.median / 1e9, q.median, q.min, q.max);
      std::fflush(stdout);
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_batchnorm_forms: %s\n", e.what());
    return 1;
  }
}
