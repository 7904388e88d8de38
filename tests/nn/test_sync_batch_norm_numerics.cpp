// SyncBatchNorm against the float64 reference of the whole batch over many
// random configurations: 1 to 8 replicas with uneven, empty and size-1
// shards, ranks 2 to 5, affine on and off, momentum 0.1, 1 and none, both eps
// modes, and data that is ordinary, far from zero (|mean| = 1e4 * std), of a
// variance far below eps, constant per channel, or spread over the float32
// range (values up to 3.3e38 of both signs, whose float32 differences and
// squares overflow). Every output, input gradient, summed parameter gradient
// and running statistic must be within 1e-5 * max(1, |reference|)
// (docs/numerics.md); a running statistic is compared with the reference
// rounded to its float32 buffer. One allowance: float32 computes x - x0 in
// the moments, so the mean's error is a rounding of the spread (about 1e-8
// of the standard deviation), which the relative bound does not cover where
// |mean| << std; for data across the float32 range (std 1.5e38, |mean| down
// to 1e34) the running mean may also be off by 1e-6 of the spread. The default run takes 160
// configurations, the [.stress] run 1200.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/batch_norm_layers.hpp"
#include "support/device_under_test.hpp"
#include "support/reference.hpp"
#include "support/seeds.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::make_batchnorm;
using syncbn::testing::spatial_dims_of;
using syncbn::testing::spatial_size;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;

namespace {

enum class Data { Ordinary, FarFromZero, TinyVariance, Constant, FloatRange };

constexpr double kFloatRangeSpread = 1.5e38;

const char* name_of(Data d) {
  switch (d) {
    case Data::Ordinary: return "ordinary";
    case Data::FarFromZero: return "|mean| = 1e4 * std";
    case Data::TinyVariance: return "variance << eps";
    case Data::Constant: return "constant channels";
    case Data::FloatRange: return "values across the float32 range";
  }
  return "?";
}

struct Config {
  std::vector<std::int64_t> dims;   // the whole batch
  std::vector<std::int64_t> split;  // rows per replica
  bool affine = true;
  std::optional<double> momentum;
  bool clamp = false;
  double eps = 1e-5;
  Data data = Data::Ordinary;

  std::string str() const {
    std::ostringstream out;
    out << "shape (";
    for (std::size_t i = 0; i < dims.size(); ++i) out << (i ? ", " : "") << dims[i];
    out << "), split {";
    for (std::size_t i = 0; i < split.size(); ++i) out << (i ? ", " : "") << split[i];
    out << "}, affine " << affine << ", momentum " << (momentum ? std::to_string(*momentum) : "none") << ", "
        << (clamp ? "clamp" : "plus") << " eps " << eps << ", " << name_of(data);
    return out.str();
  }
};

Config random_config(std::mt19937_64& rng) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<std::uint64_t>(n)); };
  Config c;
  const int k = 1 + pick(8);
  const int rank = 2 + pick(4);
  const std::int64_t n = 2 + pick(20);
  c.dims = {n, 1 + pick(5)};
  for (int i = 2; i < rank; ++i) c.dims.push_back(1 + pick(3));
  // Uneven shards: random cut points, so empty and size-1 shards occur.
  std::vector<std::int64_t> cuts{0, n};
  for (int i = 1; i < k; ++i) cuts.push_back(static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n + 1)));
  std::sort(cuts.begin(), cuts.end());
  for (int i = 0; i < k; ++i) c.split.push_back(cuts[static_cast<std::size_t>(i) + 1] - cuts[static_cast<std::size_t>(i)]);
  c.affine = pick(2) == 0;
  const int m = pick(3);
  c.momentum = m == 0 ? std::optional<double>(0.1) : m == 1 ? std::optional<double>(1.0) : std::nullopt;
  c.clamp = pick(2) == 0;
  c.eps = pick(2) == 0 ? 1e-5 : 0.1;
  c.data = static_cast<Data>(pick(5));
  return c;
}

// A batch of the configuration's kind, as float32 values (the reference
// reads the same rounded values).
std::vector<float> make_data(const Config& c, std::uint64_t seed) {
  const Shape shape(c.dims);
  const std::int64_t ch = c.dims[1], l = spatial_size(shape);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<float> x(static_cast<std::size_t>(shape.numel()));
  std::vector<double> center(static_cast<std::size_t>(ch)), spread(static_cast<std::size_t>(ch));
  for (std::int64_t j = 0; j < ch; ++j) {
    const auto u = static_cast<std::size_t>(j);
    switch (c.data) {
      case Data::Ordinary: center[u] = 3.0 * normal(rng); spread[u] = 0.5 + std::abs(normal(rng)); break;
      case Data::FarFromZero: spread[u] = 0.5 + std::abs(normal(rng)); center[u] = 1e4 * spread[u] * (j % 2 ? -1 : 1); break;
      case Data::TinyVariance: center[u] = normal(rng); spread[u] = 1e-4 * std::sqrt(c.eps); break;
      case Data::Constant: center[u] = normal(rng); spread[u] = 0.0; break;
      case Data::FloatRange: center[u] = 1e37 * normal(rng); spread[u] = kFloatRangeSpread; break;
    }
  }
  for (std::int64_t i = 0; i < c.dims[0]; ++i)
    for (std::int64_t j = 0; j < ch; ++j)
      for (std::int64_t k = 0; k < l; ++k) {
        const auto u = static_cast<std::size_t>(j);
        // Clamped inside the float32 range (FloatRange draws pass it).
        const double v = std::clamp(center[u] + spread[u] * normal(rng), -3.3e38, 3.3e38);
        x[static_cast<std::size_t>((i * ch + j) * l + k)] = static_cast<float>(v);
      }
  return x;
}

std::vector<float> normal_floats(std::int64_t n, std::uint64_t seed, double mean, double stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(mean, stddev);
  std::vector<float> out(static_cast<std::size_t>(n));
  for (auto& v : out) v = static_cast<float>(normal(rng));
  return out;
}

// |got - want| <= 1e-5 * max(1, |want|) everywhere; on a mismatch, one
// failed check naming the first index. With `as_float`, want is first
// rounded to float32 (a buffer of that type holds a variance of 1e76 as
// infinity); `floor` is an absolute allowance added to the bound.
void check_all(const std::vector<double>& got, const std::vector<double>& want_exact, const std::string& what,
               bool as_float = false, double floor = 0) {
  INFO(what);
  REQUIRE(got.size() == want_exact.size());
  std::vector<double> want = want_exact;
  if (as_float)
    for (double& v : want) v = static_cast<double>(static_cast<float>(v));
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double allowed = 1e-5 * std::max(1.0, std::abs(want[i])) + floor;
    const bool ok = got[i] == want[i] || std::abs(got[i] - want[i]) <= allowed ||
                    (std::isnan(got[i]) && std::isnan(want[i]));
    if (!ok) {
      INFO("first mismatch at index " << i << " of " << got.size() << ": got " << got[i] << ", expected " << want[i]);
      CHECK(std::abs(got[i] - want[i]) <= allowed);
      return;
    }
  }
}

std::vector<double> grad_sum(parallel::Replication& replicas, std::size_t index) {
  std::vector<double> total;
  for (std::size_t k = 0; k < replicas.size(); ++k) {
    const auto g = replicas[k].parameters()[index]->grad.to_vector<double>();
    if (total.empty()) total.assign(g.size(), 0.0);
    for (std::size_t i = 0; i < g.size(); ++i) total[i] += g[i];
  }
  return total;
}

// Two training steps of one configuration against the reference.
void check_config(const Config& c, std::uint64_t seed) {
  INFO(c.str());
  const Shape shape(c.dims);
  const std::int64_t n = c.dims[0], ch = c.dims[1], l = spatial_size(shape);
  nn::BatchNormOptions options;
  options.momentum = c.momentum;
  options.affine = c.affine;
  options.eps = c.eps;
  options.eps_mode = c.clamp ? nn::EpsMode::Clamp : nn::EpsMode::Plus;
  options.device = test_device();
  auto layer = make_batchnorm(true, spatial_dims_of(shape), ch, options);
  std::vector<double> w, b;
  if (c.affine) {
    const auto wf = normal_floats(ch, seed + 1, 1.0, 0.5), bf = normal_floats(ch, seed + 2, 0.0, 1.0);
    layer->weight().value.copy_(Tensor::from_vector(wf, Shape{ch}, test_device()));
    layer->bias().value.copy_(Tensor::from_vector(bf, Shape{ch}, test_device()));
    w.assign(wf.begin(), wf.end());
    b.assign(bf.begin(), bf.end());
  }
  const testing::ref::BnConfig cfg{c.eps, c.momentum, c.clamp};
  std::vector<double> rm(static_cast<std::size_t>(ch), 0.0), rv(static_cast<std::size_t>(ch), 1.0);
  auto replicas = parallel::replicate(*layer, test_devices(static_cast<int>(c.split.size())));
  const auto& devices = replicas.devices();
  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    const auto xf = make_data(c, seed + 10 * static_cast<std::uint64_t>(step));
    const auto dyf = normal_floats(shape.numel(), seed + 10 * static_cast<std::uint64_t>(step) + 5, 0.3, 1.0);
    const Tensor x = Tensor::from_vector(xf, shape, test_device());
    const Tensor dy = Tensor::from_vector(dyf, shape, test_device());
    const std::vector<double> xs(xf.begin(), xf.end()), dys(dyf.begin(), dyf.end());
    const auto r = testing::ref::batch_norm(xs, dys, w, b, n, ch, l, cfg);
    testing::ref::update_running(rm, rv, r, cfg, step);
    const auto outputs = parallel::parallel_apply(replicas, parallel::scatter(x, devices, c.split));
    const auto grads = parallel::parallel_backward(replicas, parallel::scatter(dy, devices, c.split));
    check_all(parallel::gather(outputs, test_device()).to_vector<double>(), r.y, "output");
    check_all(parallel::gather(grads, test_device()).to_vector<double>(), r.dx, "grad_input");
    if (c.affine) {
      check_all(grad_sum(replicas, 0), r.dweight, "grad_weight");
      check_all(grad_sum(replicas, 1), r.dbias, "grad_bias");
      for (std::size_t k = 0; k < replicas.size(); ++k) replicas[k].zero_grad();
    }
    check_all(layer->running_mean().to_vector<double>(), rm, "running_mean", true,
              c.data == Data::FloatRange ? 1e-6 * kFloatRangeSpread : 0.0);
    check_all(layer->running_var().to_vector<double>(), rv, "running_var", true);
    CHECK(layer->num_batches_tracked().item() == static_cast<double>(step));
  }
}

void run_configs(int count, std::uint64_t stream) {
  std::mt19937_64 rng(syncbn::testing::kSeed + stream);
  for (int i = 0; i < count; ++i) {
    const Config c = random_config(rng);
    CAPTURE(syncbn::testing::kSeed, stream, i);
    check_config(c, syncbn::testing::kSeed + stream * 100000 + static_cast<std::uint64_t>(i) * 100);
  }
}

}  // namespace

TEST_CASE("SyncBatchNorm matches the float64 reference over random configurations", "[nn][levels][threads]") {
  run_configs(160, 1);
}

TEST_CASE("SyncBatchNorm matches the float64 reference over many random configurations", "[nn][.stress][threads]") {
  run_configs(1200, 2);
}
