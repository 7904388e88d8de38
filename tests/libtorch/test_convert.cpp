// convert_sync_batchnorm / revert_sync_batchnorm / check_synchronized:
// nested Sequential, ModuleList and ModuleDict rebuilt with every BatchNorm
// replaced and its values carried, the result computing what the original
// does; plain batch norms that the conversion cannot reach are named.

#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>


#include "support/matchers.hpp"
#include "support/torch_catch.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/libtorch/convert.hpp"

namespace lt = syncbn::libtorch;
using syncbn::testing::MessageIs;

namespace {

// A module of the user's own with a named BatchNorm member, which the
// conversion cannot rebuild.
struct OwnBlockImpl : torch::nn::Module {
  OwnBlockImpl() : bn(register_module("bn", torch::nn::BatchNorm2d(3))) {}
  torch::Tensor forward(const torch::Tensor& x) { return bn->forward(x); }
  torch::nn::BatchNorm2d bn;
};
TORCH_MODULE(OwnBlock);

std::vector<std::string> state_names(const torch::nn::Module& m) {
  std::vector<std::string> names;
  for (const auto& item : m.named_parameters()) names.push_back(item.key());
  for (const auto& item : m.named_buffers()) names.push_back(item.key());
  return names;
}

template <class T>
int count_of(const torch::nn::Module& m) {
  int n = 0;
  for (const auto& child : m.modules(/*include_self=*/true)) n += std::dynamic_pointer_cast<T>(child) != nullptr;
  return n;
}

}  // namespace

TEST_CASE("Conversion rebuilds nested containers with every BatchNorm synchronized and its state carried",
          "[libtorch]") {
  CAPTURE(syncbn::testing::kSeed);
  torch::manual_seed(syncbn::testing::kSeed + 10);
  // libtorch's Sequential holds modules with a forward only: the nesting
  // goes through ModuleList and ModuleDict.
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 3, 3).padding(1)), torch::nn::BatchNorm2d(3),
                            torch::nn::Functional(torch::relu));
  torch::nn::ModuleList list(torch::nn::Sequential(torch::nn::Conv2d(3, 3, 1), torch::nn::BatchNorm2d(3)),
                             torch::nn::Linear(4, 4), torch::nn::BatchNorm1d(4));
  torch::nn::ModuleDict dict(std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>{
      {"norm", torch::nn::BatchNorm3d(2).ptr()}});
  auto root = std::make_shared<torch::nn::ModuleListImpl>();
  root->push_back(net.ptr());
  root->push_back(list.ptr());
  root->push_back(dict.ptr());
  root->to(torch::kDouble);
  // A training step moves the running statistics: they must be carried.
  net->forward(torch::randn({4, 2, 5, 5}, torch::kDouble));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : root->parameters()) p.uniform_(-1, 1);
  }

  const auto converted = lt::convert_sync_batchnorm(root);
  CHECK(count_of<torch::nn::BatchNorm2dImpl>(*converted) == 0);
  CHECK(count_of<lt::SyncBatchNorm2dImpl>(*converted) == 2);
  CHECK(count_of<lt::SyncBatchNorm1dImpl>(*converted) == 1);
  CHECK(count_of<lt::SyncBatchNorm3dImpl>(*converted) == 1);
  CHECK_NOTHROW(lt::check_synchronized(*converted));
  // The original is as it was.
  CHECK(count_of<torch::nn::BatchNorm2dImpl>(*root) == 2);
  // The same names, dtype and values.
  CHECK(state_names(*converted) == state_names(*root));
  const auto before = root->named_parameters();
  for (const auto& item : converted->named_parameters()) {
    INFO(item.key());
    CHECK(item.value().scalar_type() == torch::kDouble);
    CHECK(torch::equal(item.value(), before[item.key()]));
  }
  const auto buffers = root->named_buffers();
  for (const auto& item : converted->named_buffers()) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), buffers[item.key()]));
  }
  // The rebuilt Sequential computes what the original does, in eval and in
  // training (the layer alone is batch norm over its own batch).
  auto converted_net = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(converted->children()[0]);
  REQUIRE(converted_net != nullptr);
  const torch::Tensor x = torch::randn({3, 2, 5, 5}, torch::kDouble);
  for (const bool training : {false, true}) {
    INFO("training " << training);
    net->train(training);
    converted_net->train(training);
    const torch::Tensor want = net->forward(x), got = converted_net->forward(x);
    CHECK(torch::allclose(got, want, 1e-12, 1e-12));
  }

  // And back.
  const auto reverted = lt::revert_sync_batchnorm(converted);
  CHECK(count_of<lt::SyncBatchNorm2dImpl>(*reverted) == 0);
  CHECK(count_of<torch::nn::BatchNorm2dImpl>(*reverted) == 2);
  CHECK(count_of<torch::nn::BatchNorm1dImpl>(*reverted) == 1);
  CHECK(count_of<torch::nn::BatchNorm3dImpl>(*reverted) == 1);
  const auto synced_state = converted->named_buffers();
  for (const auto& item : reverted->named_buffers()) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), synced_state[item.key()]));
  }
  // A BatchNorm as the module itself converts too.
  auto single = lt::convert_sync_batchnorm(torch::nn::BatchNorm1d(5).ptr());
  CHECK(std::dynamic_pointer_cast<lt::SyncBatchNorm1dImpl>(single) != nullptr);
}

TEST_CASE("Plain batch norms that a synchronized run would miss are named, with their paths", "[libtorch]") {
  torch::nn::Sequential net(torch::nn::Conv2d(3, 3, 1), OwnBlock(), torch::nn::BatchNorm2d(3));
  CHECK_THROWS_MATCHES(
      lt::check_synchronized(*net.ptr(), "DataParallel"), syncbn::InvalidArgument,
      MessageIs("DataParallel: plain batch norms at '1.bn' (torch::nn::BatchNorm2d), '2' (torch::nn::BatchNorm2d), "
                "expected SyncBatchNorm layers: a synchronized run would normalise each replica's shard alone there "
                "(convert_sync_batchnorm rebuilds Sequential, ModuleList and ModuleDict; a module of your own builds "
                "its layers as syncbn::libtorch::SyncBatchNorm, docs/usage.md \"With libtorch\")"));
  // The conversion reaches the Sequential's own layer, not the member of the user's module.
  const auto converted = lt::convert_sync_batchnorm(net.ptr());
  CHECK_THROWS_WITH(lt::check_synchronized(*converted),
                    Catch::StartsWith("check_synchronized: a plain batch norm at '1.bn' (torch::nn::BatchNorm2d)"));
}

TEST_CASE("The replace_module pitfall is caught after a training step", "[libtorch]") {
  // replace_module swaps the registered child, but the member that forward
  // calls stays the plain layer: the tree shows a SyncBatchNorm (the static
  // check passes) while forward runs the old, unsynchronized one.
  OwnBlock own;
  own->replace_module("bn", std::make_shared<lt::SyncBatchNorm2dImpl>(torch::nn::BatchNormOptions(3)));
  CHECK(std::dynamic_pointer_cast<lt::SyncBatchNorm2dImpl>(own->named_children()["bn"]) != nullptr);
  CHECK(std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(own->bn.ptr()) != nullptr);
  CHECK_NOTHROW(lt::check_synchronized(*own));
  own->forward(torch::randn({4, 3, 2, 2}));
  CHECK_THROWS_MATCHES(
      lt::check_layers_ran(*own, "DataParallel"), syncbn::InvalidArgument,
      MessageIs("DataParallel: the synchronized batch norm 'bn' (SyncBatchNorm2d(3)) ran no training forward, "
                "expected every one to run in a training step: the model's forward calls another layer there "
                "(Module::replace_module swaps the registered child, not the member that forward calls; build the "
                "module with SyncBatchNorm layers, docs/usage.md \"With libtorch\")"));
  // Built with the synchronized layer, the same step passes the check.
  torch::nn::Sequential built(torch::nn::Conv2d(3, 3, 1), lt::SyncBatchNorm2d(torch::nn::BatchNormOptions(3)));
  built->forward(torch::randn({4, 3, 2, 2}));
  CHECK_NOTHROW(lt::check_layers_ran(*built.ptr()));
  // Eval forwards do not count.
  lt::SyncBatchNorm2d fresh(torch::nn::BatchNormOptions(3));
  fresh->eval();
  fresh->forward(torch::randn({4, 3, 2, 2}));
  CHECK_THROWS(lt::check_layers_ran(*fresh.ptr()));
}
