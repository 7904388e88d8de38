// syncbn::libtorch::SyncBatchNorm1d/2d/3d against libtorch itself: K replica
// threads, each running forward + loss + backward on its shard (uneven, one
// empty where K allows), must give torch::nn::BatchNorm's outputs, input
// gradients, summed parameter gradients and running statistics on the whole
// batch in one thread, in float64; eval, momentum none, affine off,
// track_running_stats off and half-precision input as torch has them; the
// state moves between the plain and the synchronized module both ways.

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>


#include "support/matchers.hpp"
#include "support/torch_catch.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/libtorch/sync_batch_norm.hpp"

using namespace std::chrono_literals;
using syncbn::testing::MessageIs;
namespace lt = syncbn::libtorch;

namespace {

// |got - want| <= 1e-10 * max(1, |want|) everywhere (float64 on both sides).
void check_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what, double tol = 1e-10) {
  INFO(what);
  REQUIRE(got.sizes() == want.sizes());
  const torch::Tensor g = got.to(torch::kDouble), w = want.to(torch::kDouble);
  const double worst = ((g - w).abs() / w.abs().clamp_min(1.0)).max().item<double>();
  CHECK(worst <= tol);
}

// Any of the three plain modules and its synchronized counterpart, by D.
struct Pair {
  std::shared_ptr<torch::nn::Module> plain;
  std::shared_ptr<torch::nn::Module> synced;
  std::function<torch::Tensor(const torch::Tensor&)> plain_forward;
};

std::shared_ptr<torch::nn::Module> make_synced(int d, const torch::nn::BatchNormOptions& o, lt::SyncOptions s = {}) {
  switch (d) {
    case 1: return std::make_shared<lt::SyncBatchNorm1dImpl>(o, s);
    case 2: return std::make_shared<lt::SyncBatchNorm2dImpl>(o, s);
    default: return std::make_shared<lt::SyncBatchNorm3dImpl>(o, s);
  }
}

Pair make_pair(int d, const torch::nn::BatchNormOptions& o) {
  Pair p;
  if (d == 1) {
    auto m = std::make_shared<torch::nn::BatchNorm1dImpl>(o);
    p.plain = m;
    p.plain_forward = [m](const torch::Tensor& x) { return m->forward(x); };
  } else if (d == 2) {
    auto m = std::make_shared<torch::nn::BatchNorm2dImpl>(o);
    p.plain = m;
    p.plain_forward = [m](const torch::Tensor& x) { return m->forward(x); };
  } else {
    auto m = std::make_shared<torch::nn::BatchNorm3dImpl>(o);
    p.plain = m;
    p.plain_forward = [m](const torch::Tensor& x) { return m->forward(x); };
  }
  p.synced = make_synced(d, o);
  return p;
}

torch::Tensor forward_of(const std::shared_ptr<torch::nn::Module>& m, const torch::Tensor& x) {
  if (auto a = std::dynamic_pointer_cast<lt::SyncBatchNorm1dImpl>(m)) return a->forward(x);
  if (auto b = std::dynamic_pointer_cast<lt::SyncBatchNorm2dImpl>(m)) return b->forward(x);
  return std::dynamic_pointer_cast<lt::SyncBatchNorm3dImpl>(m)->forward(x);
}

torch::Tensor param(const std::shared_ptr<torch::nn::Module>& m, const std::string& name) {
  return m->named_parameters(false).contains(name) ? m->named_parameters(false)[name] : m->named_buffers(false)[name];
}

// The shard bounds of n rows over k replicas: uneven, and with k >= 3 the
// second replica's shard empty.
std::vector<std::int64_t> bounds_of(std::int64_t n, int k) {
  std::vector<std::int64_t> b{0};
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(k), 0);
  std::int64_t left = n;
  for (int i = 0; i < k; ++i) {
    if (k >= 3 && i == 1) continue;
    const int rest = k - i - (k >= 3 && i < 1 ? 1 : 0);
    const std::int64_t take = i == k - 1 ? left : std::max<std::int64_t>(1, left / rest + (i % 2));
    sizes[static_cast<std::size_t>(i)] = std::min(take, left);
    left -= sizes[static_cast<std::size_t>(i)];
  }
  for (auto s : sizes) b.push_back(b.back() + s);
  return b;
}

struct StepResult {
  torch::Tensor y, dx, dweight, dbias;
};

// One training step of `replicas` (clones, linked) on x, the loss sum(y * g):
// each replica thread its own shard's forward and backward.
StepResult replica_step(const std::vector<std::shared_ptr<torch::nn::Module>>& replicas, const torch::Tensor& x,
                        const torch::Tensor& g) {
  const int k = static_cast<int>(replicas.size());
  const auto b = bounds_of(x.size(0), k);
  std::vector<torch::Tensor> ys(static_cast<std::size_t>(k)), dxs(static_cast<std::size_t>(k));
  std::vector<std::string> errors(static_cast<std::size_t>(k));
  std::vector<std::thread> threads;
  for (int r = 0; r < k; ++r)
    threads.emplace_back([&, r] {
      try {
        const auto i = static_cast<std::size_t>(r);
        torch::Tensor xs = x.narrow(0, b[i], b[i + 1] - b[i]).clone().set_requires_grad(true);
        torch::Tensor y = forward_of(replicas[i], xs);
        (y * g.narrow(0, b[i], b[i + 1] - b[i])).sum().backward();
        ys[i] = y.detach();
        dxs[i] = xs.grad();
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e == "");
  StepResult out{torch::cat(ys), torch::cat(dxs), {}, {}};
  for (const auto& rep : replicas) {
    const torch::Tensor w = param(rep, "weight");
    if (!w.defined() || !w.grad().defined()) continue;
    const torch::Tensor bias = param(rep, "bias");
    out.dweight = out.dweight.defined() ? out.dweight + w.grad() : w.grad().clone();
    out.dbias = out.dbias.defined() ? out.dbias + bias.grad() : bias.grad().clone();
    w.mutable_grad().zero_();
    bias.mutable_grad().zero_();
  }
  return out;
}

std::vector<std::int64_t> shape_of(int d, std::int64_t n, std::int64_t c) {
  switch (d) {
    case 1: return {n, c, 3};
    case 2: return {n, c, 3, 2};
    default: return {n, c, 2, 2, 3};
  }
}

}  // namespace

TEST_CASE("SyncBatchNorm over K replica threads equals torch's BatchNorm on the whole batch", "[libtorch][threads]") {
  const int d = GENERATE(1, 2, 3);
  const int k = GENERATE(1, 2, 3, 5, 8);
  const bool cumulative = GENERATE(false, true);  // momentum none: the cumulative average
  CAPTURE(d, k, cumulative, syncbn::testing::kSeed);
  torch::manual_seed(syncbn::testing::kSeed);
  constexpr std::int64_t n = 11, c = 4;
  auto options = torch::nn::BatchNormOptions(c);
  if (cumulative) options.momentum(c10::nullopt);
  Pair pair = make_pair(d, options);
  pair.plain->to(torch::kDouble);
  pair.synced->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    param(pair.plain, "weight").uniform_(0.5, 1.5);
    param(pair.plain, "bias").uniform_(-0.5, 0.5);
    param(pair.synced, "weight").copy_(param(pair.plain, "weight"));
    param(pair.synced, "bias").copy_(param(pair.plain, "bias"));
  }
  std::vector<std::shared_ptr<torch::nn::Module>> replicas{pair.synced};
  for (int r = 1; r < k; ++r) replicas.push_back(pair.synced->clone());
  lt::synchronize_replicas(replicas);

  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    const auto shape = shape_of(d, n, c);
    const torch::Tensor x = torch::randn(shape, torch::kDouble) * 2 + 3;
    const torch::Tensor g = torch::randn(shape, torch::kDouble);
    const torch::Tensor xr = x.clone().set_requires_grad(true);
    const torch::Tensor yr = pair.plain_forward(xr);
    (yr * g).sum().backward();

    const StepResult got = replica_step(replicas, x, g);
    check_close(got.y, yr.detach(), "output");
    check_close(got.dx, xr.grad(), "grad_input");
    check_close(got.dweight, param(pair.plain, "weight").grad(), "grad_weight summed over the replicas");
    check_close(got.dbias, param(pair.plain, "bias").grad(), "grad_bias summed over the replicas");
    param(pair.plain, "weight").mutable_grad().zero_();
    param(pair.plain, "bias").mutable_grad().zero_();
    check_close(param(replicas[0], "running_mean"), param(pair.plain, "running_mean"), "running_mean");
    check_close(param(replicas[0], "running_var"), param(pair.plain, "running_var"), "running_var");
    CHECK(param(replicas[0], "num_batches_tracked").item<std::int64_t>() == step);
  }

  // Eval: the running statistics, no exchange (replica 0 alone must not wait).
  pair.plain->eval();
  replicas[0]->eval();
  const torch::Tensor x = torch::randn(shape_of(d, 3, c), torch::kDouble);
  check_close(forward_of(replicas[0], x), pair.plain_forward(x), "eval output");
}

TEST_CASE("Affine off, running statistics off and input without a gradient work as in torch", "[libtorch][threads]") {
  const bool affine = GENERATE(false, true);
  const bool track = GENERATE(false, true);
  const bool input_grad = GENERATE(false, true);
  CAPTURE(affine, track, input_grad, syncbn::testing::kSeed);
  torch::manual_seed(syncbn::testing::kSeed + 1);
  constexpr std::int64_t n = 9, c = 3;
  const auto options = torch::nn::BatchNormOptions(c).affine(affine).track_running_stats(track);
  Pair pair = make_pair(2, options);
  pair.plain->to(torch::kDouble);
  pair.synced->to(torch::kDouble);
  std::vector<std::shared_ptr<torch::nn::Module>> replicas{pair.synced, pair.synced->clone()};
  lt::synchronize_replicas(replicas);
  const torch::Tensor x = torch::randn({n, c, 2, 3}, torch::kDouble);
  const torch::Tensor g = torch::randn({n, c, 2, 3}, torch::kDouble);
  const torch::Tensor xr = x.clone().set_requires_grad(input_grad);
  const torch::Tensor yr = pair.plain_forward(xr);
  if (affine || input_grad) (yr * g).sum().backward();
  // The replicas' step, with or without an input gradient.
  std::vector<torch::Tensor> ys(2), dxs(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        const std::int64_t begin = r == 0 ? 0 : 4, rows = r == 0 ? 4 : n - 4;
        torch::Tensor xs = x.narrow(0, begin, rows).clone().set_requires_grad(input_grad);
        torch::Tensor y = forward_of(replicas[static_cast<std::size_t>(r)], xs);
        if (affine || input_grad) (y * g.narrow(0, begin, rows)).sum().backward();
        ys[static_cast<std::size_t>(r)] = y.detach();
        if (input_grad) dxs[static_cast<std::size_t>(r)] = xs.grad();
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e == "");
  check_close(torch::cat(ys), yr.detach(), "output");
  if (input_grad) check_close(torch::cat(dxs), xr.grad(), "grad_input");
  if (affine) {
    check_close(param(replicas[0], "weight").grad() + param(replicas[1], "weight").grad(),
                param(pair.plain, "weight").grad(), "grad_weight");
    check_close(param(replicas[0], "bias").grad() + param(replicas[1], "bias").grad(), param(pair.plain, "bias").grad(),
                "grad_bias");
  } else {
    CHECK_FALSE(replicas[0]->named_parameters(false).contains("weight"));
  }
  if (track) {
    check_close(param(replicas[0], "running_mean"), param(pair.plain, "running_mean"), "running_mean");
    check_close(param(replicas[0], "running_var"), param(pair.plain, "running_var"), "running_var");
  } else {
    CHECK_FALSE(replicas[0]->named_buffers(false).contains("running_mean"));
    // Eval without running statistics: the replica's own batch, no exchange.
    pair.plain->eval();
    replicas[1]->eval();
    const torch::Tensor xe = torch::randn({5, c, 2, 3}, torch::kDouble);
    check_close(forward_of(replicas[1], xe), pair.plain_forward(xe), "eval output with batch statistics");
  }
}

TEST_CASE("Half-precision input normalises with float32 statistics", "[libtorch]") {
  const auto type = GENERATE(torch::kHalf, torch::kBFloat16);
  CAPTURE(c10::toString(type), syncbn::testing::kSeed);
  torch::manual_seed(syncbn::testing::kSeed + 2);
  auto synced = std::make_shared<lt::SyncBatchNorm2dImpl>(torch::nn::BatchNormOptions(3));
  auto plain = std::make_shared<torch::nn::BatchNorm2dImpl>(torch::nn::BatchNormOptions(3));
  plain->to(torch::kDouble);
  const torch::Tensor x = (torch::randn({6, 3, 4, 4}) * 3 + 1).to(type);
  const torch::Tensor y = synced->forward(x);
  CHECK(y.scalar_type() == type);
  const torch::Tensor want = plain->forward(x.to(torch::kDouble));
  // One rounding of the output to the half type.
  check_close(y, want, "output", type == torch::kHalf ? 2e-3 : 1.6e-2);
  check_close(synced->running_mean, plain->running_mean, "running_mean", 1e-6);
  check_close(synced->running_var, plain->running_var, "running_var", 1e-6);
  CHECK(synced->running_mean.scalar_type() == torch::kFloat);
}

TEST_CASE("State moves between torch's BatchNorm and SyncBatchNorm both ways", "[libtorch]") {
  torch::manual_seed(syncbn::testing::kSeed + 3);
  auto plain = std::make_shared<torch::nn::BatchNorm2dImpl>(torch::nn::BatchNormOptions(5));
  auto synced = std::make_shared<lt::SyncBatchNorm2dImpl>(torch::nn::BatchNormOptions(5));
  // The same names, in the same order.
  std::vector<std::string> plain_names, synced_names;
  for (const auto& item : plain->named_parameters()) plain_names.push_back(item.key());
  for (const auto& item : plain->named_buffers()) plain_names.push_back(item.key());
  for (const auto& item : synced->named_parameters()) synced_names.push_back(item.key());
  for (const auto& item : synced->named_buffers()) synced_names.push_back(item.key());
  CHECK(synced_names == plain_names);
  {
    torch::NoGradGuard no_grad;
    plain->weight.uniform_(0.5, 1.5);
    plain->bias.uniform_(-1, 1);
  }
  plain->forward(torch::randn({4, 5, 2, 2}));  // running statistics and the count move
  std::stringstream to_synced;
  torch::save(torch::nn::BatchNorm2d(plain), to_synced);
  lt::SyncBatchNorm2d loaded(torch::nn::BatchNormOptions(5));
  torch::load(loaded, to_synced);
  for (const std::string name : {"weight", "bias", "running_mean", "running_var"})
    check_close(param(loaded.ptr(), name), param(plain, name), name + " plain -> synchronized", 0);
  CHECK(loaded->num_batches_tracked.item<std::int64_t>() == 1);

  loaded->forward(torch::randn({4, 5, 2, 2}));
  std::stringstream to_plain;
  torch::save(loaded, to_plain);
  torch::nn::BatchNorm2d back(torch::nn::BatchNormOptions(5));
  torch::load(back, to_plain);
  for (const std::string name : {"weight", "bias", "running_mean", "running_var"})
    check_close(param(back.ptr(), name), param(loaded.ptr(), name), name + " synchronized -> plain", 0);
  CHECK(back->num_batches_tracked.item<std::int64_t>() == 2);
  // A clone is a SyncBatchNorm with its own state and its own exchange.
  auto copy = std::dynamic_pointer_cast<lt::SyncBatchNorm2dImpl>(loaded->clone());
  REQUIRE(copy != nullptr);
  CHECK(copy->exchange() != loaded->exchange());
  check_close(copy->running_mean, loaded->running_mean, "cloned running_mean", 0);
  CHECK_FALSE(copy->running_mean.is_same(loaded->running_mean));
}

TEST_CASE("Bad input is refused naming the layer, before any exchange", "[libtorch]") {
  lt::SyncBatchNorm2d bn(torch::nn::BatchNormOptions(4));
  CHECK_THROWS_MATCHES(bn->forward(torch::randn({2, 4, 3})), syncbn::InvalidArgument,
                       MessageIs("SyncBatchNorm2d(4)::forward: input of 3 dimensions, expected 4 (N, C, H, W)"));
  CHECK_THROWS_MATCHES(bn->forward(torch::randn({2, 3, 2, 2})), syncbn::InvalidArgument,
                       MessageIs("SyncBatchNorm2d(4)::forward: input of 3 channels (dimension 1), expected 4"));
  CHECK_THROWS_MATCHES(bn->forward(torch::ones({2, 4, 2, 2}, torch::kLong)), syncbn::InvalidArgument,
                       MessageIs("SyncBatchNorm2d(4)::forward: input of dtype Long, expected float, double, half or "
                                 "bfloat16"));
  CHECK_THROWS_MATCHES(bn->forward(torch::empty({2, 4, 2, 2}, torch::kMeta)), syncbn::InvalidArgument,
                       MessageIs("SyncBatchNorm2d(4)::forward: input is on meta, expected the CPU or a GPU"));
  CHECK_THROWS_WITH(
      bn->forward(torch::randn({1, 4, 1, 1})),
      Catch::Contains("SyncBatchNorm2d(4)::forward: 1 value per channel in the batch, expected more than 1"));
  // A module whose statistics are elsewhere (libtorch 1.13 cannot move a
  // module to the meta device, nor replace a registered buffer: the
  // member the layer reads stands for it).
  lt::SyncBatchNorm2d elsewhere(torch::nn::BatchNormOptions(4));
  elsewhere->running_mean = torch::zeros({4}, torch::kMeta);
  CHECK_THROWS_MATCHES(elsewhere->forward(torch::randn({2, 4, 2, 2})), syncbn::InvalidArgument,
                       MessageIs("SyncBatchNorm2d(4)::forward: input on cpu and the module on meta, expected both on "
                                 "one device (module->to(device))"));
  // Nothing changed: no batch was counted.
  CHECK(bn->num_batches_tracked.item<std::int64_t>() == 0);
  CHECK_THROWS_MATCHES(lt::SyncBatchNorm1d(torch::nn::BatchNormOptions(0)), syncbn::InvalidArgument,
                       MessageIs("SyncBatchNorm1d: num_features 0, expected > 0"));
  std::vector<std::shared_ptr<torch::nn::Module>> differ{std::make_shared<lt::SyncBatchNorm1dImpl>(2),
                                                         std::make_shared<lt::SyncBatchNorm1dImpl>(3)};
  CHECK_THROWS_MATCHES(lt::synchronize_replicas(differ), syncbn::InvalidArgument,
                       MessageIs("synchronize_replicas: replica 1's SyncBatchNorm1d(3) differs from replica 0's "
                                 "SyncBatchNorm1d(2), expected clones of one module"));
}
