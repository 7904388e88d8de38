// syncbn::libtorch::DataParallel against libtorch itself: a small torch
// ResNet (residual blocks with batch norm) trained for 3 SGD steps over K
// replica threads must end with the parameters and running statistics of
// the same network trained on the whole batch in one thread (float64);
// a replica's failure in forward, loss or backward reaches the caller
// naming it and leaves the module as it was; the caller's grad mode
// reaches the replica threads, which persist from step to step.

#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include "support/matchers.hpp"
#include "support/torch_catch.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/error.hpp"
#include "syncbn/libtorch/convert.hpp"
#include "syncbn/libtorch/data_parallel.hpp"
#include "syncbn/libtorch/sync_batch_norm.hpp"

namespace lt = syncbn::libtorch;
using syncbn::testing::MessageIs;

namespace {

// A basic residual block whose norm layer is a template parameter: the
// plain network is the reference, the synchronized one runs under DataParallel.
template <class Norm>
struct BlockImpl : torch::nn::Module {
  BlockImpl()
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)))),
        bn1(register_module("bn1", Norm(torch::nn::BatchNormOptions(4)))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)))),
        bn2(register_module("bn2", Norm(torch::nn::BatchNormOptions(4)))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return torch::relu(x + bn2->forward(conv2->forward(torch::relu(bn1->forward(conv1->forward(x))))));
  }
  torch::nn::Conv2d conv1;
  Norm bn1;
  torch::nn::Conv2d conv2;
  Norm bn2;
};

template <class Norm>
struct NetImpl : torch::nn::Module {
  NetImpl()
      : stem(register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).padding(1).bias(false)))),
        bn(register_module("bn", Norm(torch::nn::BatchNormOptions(4)))),
        block(register_module("block", std::make_shared<BlockImpl<Norm>>())),
        fc(register_module("fc", torch::nn::Linear(4, 3))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = block->forward(torch::relu(bn->forward(stem->forward(x))));
    return fc->forward(h.mean({2, 3}));
  }
  torch::nn::Conv2d stem;
  Norm bn;
  std::shared_ptr<BlockImpl<Norm>> block;
  torch::nn::Linear fc;
};

using PlainNet = NetImpl<torch::nn::BatchNorm2d>;
using SyncNet = NetImpl<lt::SyncBatchNorm2d>;

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& target) {
  return torch::nn::functional::cross_entropy(logits, target);
}

// SyncNet is a plain torch::nn::Module (not Cloneable): its replicas are made.
std::shared_ptr<torch::nn::Module> make_sync_net() { return std::make_shared<SyncNet>(); }

lt::ReplicaLoss net_loss() {
  return [](torch::nn::Module& m, const torch::Tensor& x, const torch::Tensor& t) {
    return cross_entropy(static_cast<SyncNet&>(m).forward(x), t);
  };
}

// The synchronized network with the plain one's state (the same names).
std::shared_ptr<SyncNet> synced_copy_of(const PlainNet& plain) {
  auto net = std::make_shared<SyncNet>();
  net->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  const auto params = plain.named_parameters();
  for (auto& item : net->named_parameters()) item.value().copy_(params[item.key()]);
  const auto buffers = plain.named_buffers();
  for (auto& item : net->named_buffers()) item.value().copy_(buffers[item.key()]);
  return net;
}

void check_same_state(const torch::nn::Module& got, const torch::nn::Module& want, double tol) {
  const auto params = want.named_parameters();
  for (const auto& item : got.named_parameters()) {
    INFO(item.key());
    CHECK(torch::allclose(item.value().cpu(), params[item.key()], tol, tol));
  }
  const auto buffers = want.named_buffers();
  for (const auto& item : got.named_buffers()) {
    INFO(item.key());
    CHECK(torch::allclose(item.value().to(torch::kCPU, torch::kDouble), buffers[item.key()].to(torch::kDouble), tol,
                          tol));
  }
}

// Trains the plain network on the whole batch in one thread and its
// synchronized copy (kept on `home`) through DataParallel over `devices`
// (empty: `k` replicas on the CPU) for 3 SGD steps; both must agree.
void check_trains_as_one_thread(int k, const std::vector<torch::Device>& devices, const torch::Device& home) {
  torch::manual_seed(syncbn::testing::kSeed + 20);
  auto plain = std::make_shared<PlainNet>();
  plain->to(torch::kDouble);
  auto synced = synced_copy_of(*plain);
  synced->to(home);
  lt::DataParallel dp(synced, {.replicas = k, .make_replica = make_sync_net, .devices = devices});
  CHECK(dp.replicas().size() == static_cast<std::size_t>(k));
  torch::optim::SGD plain_sgd(plain->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD synced_sgd(synced->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  constexpr std::int64_t n = 10;  // uneven over 3 and 4 replicas
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    const torch::Tensor x = torch::randn({n, 2, 5, 5}, torch::kDouble);
    const torch::Tensor y = torch::randint(0, 3, {n}, torch::kLong);
    plain_sgd.zero_grad();
    const torch::Tensor want_loss = cross_entropy(plain->forward(x), y);
    want_loss.backward();
    plain_sgd.step();
    synced_sgd.zero_grad();
    const double got_loss = dp.step(x.to(home), y.to(home), net_loss());
    synced_sgd.step();
    CHECK(got_loss == Approx(want_loss.item<double>()).epsilon(1e-12));
  }
  check_same_state(*synced, *plain, 1e-10);
  // Eval on the module itself: the running statistics the replicas kept.
  plain->eval();
  synced->eval();
  const torch::Tensor x = torch::randn({3, 2, 5, 5}, torch::kDouble);
  CHECK(torch::allclose(synced->forward(x.to(home)).cpu(), plain->forward(x), 1e-10, 1e-10));
}

}  // namespace

TEST_CASE("A torch ResNet trained for 3 SGD steps over K replicas equals one thread on the whole batch",
          "[libtorch][threads]") {
  const int k = GENERATE(1, 2, 3, 4);
  CAPTURE(k, syncbn::testing::kSeed);
  check_trains_as_one_thread(k, {}, torch::kCPU);
}

TEST_CASE("A torch ResNet trained over replicas on GPUs equals one CPU thread on the whole batch",
          "[libtorch][threads][cuda]") {
  if (!torch::cuda::is_available() || syncbn::cuda::device_count() == 0)
    SYNCBN_SKIP("no GPU for libtorch" << (torch::cuda::is_available() ? "" : " (this libtorch has no CUDA)"));
  // Two replicas on each GPU (threads share a GPU as they share the CPU),
  // the module on the CPU or on the first GPU.
  std::vector<torch::Device> devices;
  for (int g = 0; g < syncbn::cuda::device_count(); ++g)
    for (int twice = 0; twice < 2; ++twice) devices.emplace_back(torch::kCUDA, static_cast<c10::DeviceIndex>(g));
  const torch::Device home = GENERATE(torch::Device(torch::kCPU), torch::Device(torch::kCUDA, 0));
  CAPTURE(devices.size(), home.str(), syncbn::testing::kSeed);
  check_trains_as_one_thread(static_cast<int>(devices.size()), devices, home);
}

TEST_CASE("A replica that fails in forward, loss or backward fails the step naming it; the module is unchanged",
          "[libtorch][threads]") {
  const std::string where = GENERATE(as<std::string>{}, "forward", "loss", "backward");
  const int k = 3;
  CAPTURE(where, syncbn::testing::kSeed);
  torch::manual_seed(syncbn::testing::kSeed + 21);
  auto net = std::make_shared<SyncNet>();
  net->to(torch::kDouble);
  lt::DataParallel dp(net, {.replicas = k, .make_replica = make_sync_net});
  const torch::Tensor x = torch::randn({9, 2, 5, 5}, torch::kDouble);
  const torch::Tensor y = torch::randint(0, 3, {9}, torch::kLong);
  dp.step(x, y, net_loss());  // gradients and running statistics to compare with
  std::vector<torch::Tensor> before;
  for (const auto& p : net->parameters()) before.push_back(p.grad().clone());
  for (const auto& b : net->buffers()) before.push_back(b.clone());

  const lt::ReplicaLoss failing = [&](torch::nn::Module& m, const torch::Tensor& xs, const torch::Tensor& t) {
    // Replica 1 is the one with rows [3, 6).
    const bool mine = torch::equal(xs, x.narrow(0, 3, 3));
    auto& netm = static_cast<SyncNet&>(m);
    if (mine && where == "forward") throw std::runtime_error("injected in forward");
    torch::Tensor logits = netm.forward(xs);
    if (mine && where == "backward")
      logits.register_hook([](torch::Tensor g) -> torch::Tensor { throw std::runtime_error("injected in backward"); return g; });
    if (mine && where == "loss") throw std::runtime_error("injected in the loss");
    return cross_entropy(logits, t);
  };
  CHECK_THROWS_WITH(dp.step(x, y, failing), Catch::StartsWith("DataParallel::step: replica 1 failed") &&
                                                Catch::Contains("injected"));
  std::size_t i = 0;
  for (const auto& p : net->parameters()) CHECK(torch::equal(p.grad(), before[i++]));
  for (const auto& b : net->buffers()) CHECK(torch::equal(b, before[i++]));
  // The next step runs: nothing waits for the failed one.
  CHECK_NOTHROW(dp.step(x, y, net_loss()));
}

TEST_CASE("A Cloneable model (a Sequential) is cloned into its replicas and trains as one thread",
          "[libtorch][threads]") {
  CAPTURE(syncbn::testing::kSeed);
  torch::manual_seed(syncbn::testing::kSeed + 22);
  torch::nn::Sequential plain(torch::nn::Linear(3, 5), torch::nn::BatchNorm1d(5), torch::nn::Functional(torch::relu),
                              torch::nn::Linear(5, 2));
  plain->to(torch::kDouble);
  auto synced = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(lt::convert_sync_batchnorm(plain.ptr()));
  REQUIRE(synced != nullptr);
  lt::DataParallel dp(synced, {.replicas = 3});
  const torch::Tensor x = torch::randn({8, 3}, torch::kDouble), y = torch::randn({8, 2}, torch::kDouble);
  const torch::Tensor want = torch::mse_loss(plain->forward(x), y);
  want.backward();
  const double got = dp.step(x, y, [](torch::nn::Module& m, const torch::Tensor& xs, const torch::Tensor& ys) {
    return torch::mse_loss(dynamic_cast<torch::nn::SequentialImpl&>(m).forward(xs), ys);
  });
  CHECK(got == Approx(want.item<double>()).epsilon(1e-12));
  const auto grads = plain->named_parameters();
  for (const auto& item : synced->named_parameters()) {
    INFO(item.key());
    CHECK(torch::allclose(item.value().grad(), grads[item.key()].grad(), 1e-10, 1e-10));
  }
}

TEST_CASE("The caller's grad mode reaches the replica threads", "[libtorch][threads]") {
  auto net = std::make_shared<SyncNet>();
  lt::DataParallel dp(net, {.replicas = 2, .make_replica = make_sync_net});
  const torch::Tensor x = torch::randn({4, 2, 5, 5});
  const torch::Tensor y = torch::randint(0, 3, {4}, torch::kLong);
  torch::NoGradGuard no_grad;
  // Without the caller's state a replica thread would record the graph and
  // the backward would run; with it, there is no graph to go back through.
  CHECK_THROWS_WITH(dp.step(x, y, net_loss()), Catch::Contains("does not require grad"));
}

TEST_CASE("Each replica runs on the same thread at every step, not the caller's, with its share of ATen threads",
          "[libtorch][threads]") {
  auto net = std::make_shared<SyncNet>();
  lt::DataParallel dp(net, {.replicas = 2, .intra_op_threads = 3, .make_replica = make_sync_net});
  const torch::Tensor x = torch::randn({4, 2, 5, 5});
  const torch::Tensor y = torch::randint(0, 3, {4}, torch::kLong);
  // A thread's own count of the steps it ran: 1, 2, 3 on a kept thread
  // (thread ids alone could not tell: a new thread may reuse a joined one's).
  static thread_local int steps_on_this_thread = 0;
  std::vector<std::vector<int>> seen(2), aten_threads(2);  // per replica, per step
  std::vector<std::thread::id> ids(2);
  for (int step = 0; step < 3; ++step) {
    dp.step(x, y, [&](torch::nn::Module& m, const torch::Tensor& xs, const torch::Tensor& t) {
      const auto r = static_cast<std::size_t>(&m == dp.replicas()[0].get() ? 0 : 1);  // each its own entries
      seen[r].push_back(++steps_on_this_thread);
      aten_threads[r].push_back(at::get_num_threads());
      ids[r] = std::this_thread::get_id();
      return net_loss()(m, xs, t);
    });
  }
  for (std::size_t r = 0; r < 2; ++r) {
    INFO("replica " << r);
    CHECK(seen[r] == std::vector<int>{1, 2, 3});
    CHECK(aten_threads[r] == std::vector<int>{3, 3, 3});
    CHECK(ids[r] != std::this_thread::get_id());
  }
  CHECK(steps_on_this_thread == 0);  // the caller's thread ran no replica
  CHECK(ids[0] != ids[1]);
}

TEST_CASE("DataParallel refuses bad arguments and unsynchronized batch norms by name", "[libtorch]") {
  CHECK_THROWS_MATCHES(lt::DataParallel(std::make_shared<SyncNet>(), {.replicas = 0, .make_replica = make_sync_net}),
                       syncbn::InvalidArgument,
                       MessageIs("DataParallel: 0 replicas, expected 1 to 64"));
  CHECK_THROWS_WITH(lt::DataParallel(std::make_shared<PlainNet>(), {.replicas = 2}),
                    Catch::StartsWith("DataParallel: plain batch norms at 'bn' (torch::nn::BatchNorm2d)"));
  CHECK_THROWS_WITH(lt::DataParallel(std::make_shared<SyncNet>(), {.replicas = 2}),
                    Catch::StartsWith("DataParallel: the module cannot be cloned (clone() has not been implemented") &&
                        Catch::EndsWith("expected a torch::nn::Cloneable module or Options::make_replica"));
  CHECK_THROWS_MATCHES(
      lt::DataParallel(std::make_shared<SyncNet>(),
                       {.replicas = 2, .make_replica = make_sync_net, .devices = {torch::Device(torch::kCPU)}}),
      syncbn::InvalidArgument, MessageIs("DataParallel: 1 devices for 2 replicas, expected one per replica (or none: the CPU)"));
  CHECK_THROWS_MATCHES(
      lt::DataParallel(std::make_shared<SyncNet>(),
                       {.replicas = 2, .make_replica = make_sync_net, .devices = {torch::kCPU, torch::kMeta}}),
      syncbn::InvalidArgument, MessageIs("DataParallel: replica 1 on meta, expected the CPU or a GPU with its index (cuda:i)"));
  CHECK_THROWS_WITH(
      lt::DataParallel(std::make_shared<SyncNet>(),
                       {.replicas = 1, .make_replica = make_sync_net, .devices = {torch::Device(torch::kCUDA, 99)}}),
      Catch::StartsWith("DataParallel: replica 0 on cuda:99, expected a GPU this libtorch sees ("));
  lt::DataParallel dp(std::make_shared<SyncNet>(), {.replicas = 2, .intra_op_threads = 1, .make_replica = make_sync_net});
  CHECK(dp.intra_op_threads() == 1);
  CHECK_THROWS_MATCHES(dp.step(torch::randn({4, 2, 5, 5}), torch::zeros({3}, torch::kLong), net_loss()),
                       syncbn::InvalidArgument,
                       MessageIs("DataParallel::step: the target has 3 rows, expected 4 as the input"));
}
