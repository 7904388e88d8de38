// Module: names, tree walks, modes, gradients, copies and moves.

#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"

using namespace syncbn;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;

namespace {

std::shared_ptr<nn::Sequential> small_net() {
  auto inner = std::make_shared<nn::Sequential>();
  inner->add("fc", std::make_shared<nn::Linear>(3, 2, nn::LinearOptions{true, 2, DType::Float32, test_device()}));
  inner->add("bn", std::make_shared<nn::BatchNorm1d>(2, nn::BatchNormOptions{.device = test_device()}));
  auto net = std::make_shared<nn::Sequential>();
  net->add(std::make_shared<nn::Linear>(4, 3, nn::LinearOptions{true, 1, DType::Float32, test_device()}));
  net->add(std::make_shared<nn::ReLU>());
  net->add("block", inner);
  return net;
}

std::vector<std::string> names_of(const auto& pairs) {
  std::vector<std::string> out;
  for (const auto& p : pairs) out.push_back(p.first);
  return out;
}

}  // namespace

TEST_CASE("Parameters, buffers and modules are named by dotted paths in registration order", "[nn]") {
  auto net = small_net();
  CHECK(names_of(net->named_parameters()) ==
        std::vector<std::string>{"0.weight", "0.bias", "block.fc.weight", "block.fc.bias", "block.bn.weight",
                                 "block.bn.bias"});
  CHECK(names_of(net->named_buffers()) ==
        std::vector<std::string>{"block.bn.running_mean", "block.bn.running_var", "block.bn.num_batches_tracked"});
  CHECK(names_of(net->named_modules()) == std::vector<std::string>{"", "0", "1", "block", "block.fc", "block.bn"});
  CHECK(net->parameters().size() == 6);
}

TEST_CASE("train and eval apply to the whole tree", "[nn]") {
  auto net = small_net();
  CHECK(net->is_training());
  net->eval();
  for (auto& [name, m] : net->named_modules()) CHECK_FALSE(m->is_training());
  net->train();
  for (auto& [name, m] : net->named_modules()) CHECK(m->is_training());
}

TEST_CASE("Gradients start at zero and zero_grad clears them", "[nn]") {
  auto net = small_net();
  for (auto* p : net->parameters()) CHECK(p->grad.to_vector<float>() == std::vector<float>(p->grad.numel(), 0.0f));
  net->parameters()[0]->grad.fill_(3.0);
  net->zero_grad();
  CHECK(net->parameters()[0]->grad.to_vector<float>() == std::vector<float>(12, 0.0f));
}

TEST_CASE("clone is deep and clone_structure shares tensors", "[nn]") {
  auto net = small_net();
  auto deep = net->clone();
  auto shallow = net->clone_structure();
  CHECK(deep->describe() == net->describe());
  const auto original = net->parameters()[0]->value.to_vector<float>();
  deep->parameters()[0]->value.fill_(7.0);
  CHECK(net->parameters()[0]->value.to_vector<float>() == original);
  CHECK(shallow->parameters()[0]->value.shares_storage_with(net->parameters()[0]->value));
  CHECK(&shallow->children()[2].second->children()[0].second != &net->children()[2].second->children()[0].second);
  CHECK(shallow->children()[2].second.get() != net->children()[2].second.get());
}

TEST_CASE("to moves parameters, gradients and buffers", "[nn]") {
  auto net = small_net();
  const Device target = syncbn::testing::test_on_cuda() ? Device::cpu(0) : Device::cpu(2);
  net->to(target);
  for (auto* p : net->parameters()) {
    CHECK(p->value.device() == target);
    CHECK(p->grad.device() == target);
  }
  for (auto& [name, b] : net->named_buffers()) CHECK(b->device() == target);
}

TEST_CASE("replace_child swaps a child in place and rejects unknown names", "[nn]") {
  auto net = small_net();
  net->replace_child("1", std::make_shared<nn::Flatten>());
  CHECK(net->children()[1].second->describe() == "Flatten()");
  CHECK_THROWS_MATCHES(net->replace_child("nope", std::make_shared<nn::ReLU>()), InvalidArgument,
                       MessageIs(net->describe() + ": replace_child: no child named 'nope', expected one of '0', '1', 'block'"));
}

TEST_CASE("A module tree cannot contain a cycle", "[nn]") {
  auto s = std::make_shared<nn::Sequential>();
  CHECK_THROWS_MATCHES(s->add(s), InvalidArgument,
                       MessageIs("Sequential(): child '0' contains this module (it is this module), expected a module "
                                 "tree without cycles"));
  auto a = std::make_shared<nn::Sequential>();
  auto b = std::make_shared<nn::Sequential>();
  a->add("b", b);
  CHECK_THROWS_MATCHES(b->add("a", a), InvalidArgument,
                       MessageIs("Sequential(): child 'a' contains this module (at 'b'), expected a module "
                                 "tree without cycles"));
  CHECK(b->size() == 0);
  CHECK(a->named_modules().size() == 2);
}

TEST_CASE("Children, parameters and buffers need distinct names", "[nn]") {
  auto s = std::make_shared<nn::Sequential>();
  s->add("a", std::make_shared<nn::ReLU>());
  CHECK_THROWS_MATCHES(s->add("a", std::make_shared<nn::BatchNorm1d>(2, nn::BatchNormOptions{.device = test_device()})),
                       InvalidArgument,
                       MessageIs("Sequential(ReLU()): a child named 'a' is already registered, expected a new name"));
  CHECK(s->size() == 1);
}
