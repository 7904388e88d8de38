// replicate(): copies per device, aliasing rules, and the replication callback contract.

#include <catch2/catch.hpp>

#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/test_layers.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/parallel/data_parallel.hpp"
#include "syncbn/parallel/replicate.hpp"

using namespace syncbn;
using syncbn::testing::CallLog;
using syncbn::testing::MessageIs;
using syncbn::testing::Recorder;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;

namespace {

std::shared_ptr<nn::Sequential> nested_model(const std::shared_ptr<CallLog>& log) {
  auto inner = std::make_shared<nn::Sequential>();
  inner->add(std::make_shared<Recorder>("B", log));
  inner->add(std::make_shared<nn::Linear>(3, 3, nn::LinearOptions{true, 1, DType::Float32, test_device()}));
  auto outer = std::make_shared<nn::Sequential>();
  outer->add(std::make_shared<Recorder>("A", log));
  outer->add(inner);
  outer->add(std::make_shared<Recorder>("C", log));
  return outer;
}

// tag -> (copy -> context address), and the call order.
struct Parsed {
  std::map<std::string, std::map<int, std::string>> contexts;
  std::vector<std::pair<std::string, int>> order;
};

Parsed parse(const CallLog& log) {
  Parsed p;
  for (const auto& line : log.lines) {
    const auto tag = line.substr(0, line.find(' '));
    const int copy = std::stoi(line.substr(line.find("copy=") + 5));
    const auto ctx = line.substr(line.find("ctx=") + 4);
    CHECK(p.contexts[tag].count(copy) == 0);  // exactly once per copy
    p.contexts[tag][copy] = ctx;
    p.order.emplace_back(tag, copy);
  }
  return p;
}

}  // namespace

TEST_CASE("The replication callback gives each module position one shared context, master copy first",
          "[replicate][threads]") {
  const int k = GENERATE(1, 2, 3, 5);
  CAPTURE(k);
  auto log = std::make_shared<CallLog>();
  auto model = nested_model(log);
  const auto replicas = parallel::replicate(*model, test_devices(k));
  REQUIRE(replicas.size() == static_cast<std::size_t>(k));
  const Parsed p = parse(*log);
  REQUIRE(p.contexts.size() == 3);
  std::set<std::string> distinct;
  for (const auto& [tag, per_copy] : p.contexts) {
    INFO("position " << tag);
    REQUIRE(per_copy.size() == static_cast<std::size_t>(k));  // every copy, once
    for (const auto& [copy, ctx] : per_copy) CHECK(ctx == per_copy.at(0));  // one shared context
    distinct.insert(per_copy.at(0));
  }
  CHECK(distinct.size() == 3);  // one context per position
  // Every position meets copy 0 before any other copy.
  for (const auto& [tag, per_copy] : p.contexts) {
    std::size_t first_master = p.order.size(), first_other = p.order.size();
    for (std::size_t i = 0; i < p.order.size(); ++i) {
      if (p.order[i].first != tag) continue;
      if (p.order[i].second == 0) first_master = std::min(first_master, i);
      else first_other = std::min(first_other, i);
    }
    CHECK(first_master < first_other);
  }
  // Each copy learnt its own id.
  for (int c = 0; c < k; ++c)
    CHECK(dynamic_cast<Recorder&>(*replicas.modules()[static_cast<std::size_t>(c)]->children()[0].second).copy_id() == c);
}

TEST_CASE("Replicating again with another device list makes new contexts and copies", "[replicate][threads]") {
  auto log = std::make_shared<CallLog>();
  auto model = nested_model(log);
  (void)parallel::replicate(*model, test_devices(2));
  const auto first = parse(*log).contexts.at("A").at(0);
  log->lines.clear();
  const auto again = parallel::replicate(*model, test_devices(4));
  CHECK(again.size() == 4);
  const Parsed p = parse(*log);
  CHECK(p.contexts.at("A").size() == 4);
  CHECK(p.contexts.at("C").at(3) == p.contexts.at("C").at(0));
  (void)first;  // the first replication's contexts are gone with it
}

TEST_CASE("Replicas alias the module's parameters where memory is shared and own their gradients",
          "[replicate][threads]") {
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(3, 2, nn::LinearOptions{true, 4, DType::Float32, test_device()}));
  model->add(std::make_shared<nn::BatchNorm1d>(2, nn::BatchNormOptions{.device = test_device()}));
  const auto devices = test_devices(3);
  auto replicas = parallel::replicate(*model, devices);
  auto source = model->named_parameters();
  auto source_buffers = model->named_buffers();
  for (std::size_t k = 0; k < replicas.size(); ++k) {
    auto params = replicas[k].named_parameters();
    for (std::size_t j = 0; j < params.size(); ++j) {
      CHECK(params[j].second->value.device() == devices[k]);
      CHECK(params[j].second->value.shares_storage_with(source[j].second->value));
      CHECK_FALSE(params[j].second->grad.shares_storage_with(source[j].second->grad));
    }
    auto buffers = replicas[k].named_buffers();
    for (std::size_t j = 0; j < buffers.size(); ++j)
      CHECK(buffers[j].second->shares_storage_with(*source_buffers[j].second) == (k == 0));
  }
}

TEST_CASE("A replication context hands copy 0's object to the other copies and checks its type", "[replicate]") {
  nn::ReplicationContext ctx("block.bn", test_devices(2));
  CHECK(ctx.copies() == 2);
  CHECK(ctx.name() == "block.bn");
  CHECK_THROWS_MATCHES(ctx.get<int>("Layer"), InvalidArgument,
                       MessageIs("Layer: the replication context holds no shared object of the expected type; was copy "
                                 "0 replicated first?"));
  ctx.set(std::make_shared<int>(41));
  CHECK(*ctx.get<int>("Layer") == 41);
  CHECK_THROWS_AS(ctx.get<double>("Layer"), InvalidArgument);
}

TEST_CASE("replicate rejects an empty device list and more devices than the replica limit", "[replicate][threads]") {
  nn::Sequential model;
  CHECK_THROWS_MATCHES(parallel::replicate(model, {}), InvalidArgument,
                       MessageIs("replicate: 0 devices, expected 1 to 64"));
  // One more than core::kMaxReplicas logical devices: rejected before any copy is made.
  std::vector<Device> too_many;
  for (int i = 0; i <= core::kMaxReplicas; ++i) too_many.push_back(Device::cpu(i));
  CHECK_THROWS_MATCHES(parallel::replicate(model, too_many), InvalidArgument,
                       MessageIs("replicate: 65 devices, expected 1 to 64"));
  too_many.pop_back();
  CHECK(parallel::replicate(model, too_many).size() == static_cast<std::size_t>(core::kMaxReplicas));
}

namespace {

// The libtorch habit: a child registered and also kept in a member pointer,
// which the copies of this module share (they point to the original child).
class HoldsMember : public nn::Cloneable<HoldsMember> {
 public:
  explicit HoldsMember(bool through_index) : through_index_(through_index) {
    fc_ = std::make_shared<nn::Linear>(3, 2, nn::LinearOptions{true, 1, DType::Float32, test_device()});
    index_ = register_module("fc", fc_);
  }
  std::string describe() const override { return "HoldsMember"; }
  Tensor forward(const Tensor& x) override { return through_index_ ? child_as<nn::Linear>(index_).forward(x) : fc_->forward(x); }
  Tensor backward(const Tensor& g) override { return through_index_ ? child(index_).backward(g) : fc_->backward(g); }

 private:
  bool through_index_;
  std::shared_ptr<nn::Linear> fc_;
  std::size_t index_ = 0;
};

// Throws in its replication callback on one copy.
class ThrowsOnReplicate : public nn::Cloneable<ThrowsOnReplicate> {
 public:
  std::string describe() const override { return "ThrowsOnReplicate"; }
  Tensor forward(const Tensor& x) override { return x; }
  Tensor backward(const Tensor& g) override { return g; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override {
    if (copy_id == 1) throw std::runtime_error("cannot wire copy 1");
  }
};

}  // namespace

TEST_CASE("A replica that reaches a child through a member pointer is told so", "[replicate][threads]") {
  auto model = std::make_shared<HoldsMember>(false);
  auto replicas = parallel::replicate(*model, test_devices(2));
  std::vector<Tensor> xs;
  for (int i = 0; i < 2; ++i) xs.push_back(Tensor::randn(Shape{2, 3}, 7, DType::Float32, test_device(i)));
  CHECK_THROWS_MATCHES(parallel::parallel_apply(replicas, xs), InvalidArgument,
                       syncbn::testing::MessageContains(
                           "but this module is not a replica (it belongs to the original model), expected a module of "
                           "replica"));
  CHECK_THROWS_MATCHES(parallel::parallel_apply(replicas, xs), InvalidArgument,
                       syncbn::testing::MessageContains("is a child kept in a member pointer?"));
  // Reached through child_as, every replica runs its own copy.
  auto fixed = std::make_shared<HoldsMember>(true);
  auto fixed_replicas = parallel::replicate(*fixed, test_devices(2));
  const auto ys = parallel::parallel_apply(fixed_replicas, xs);
  CHECK(ys.size() == 2);
}

TEST_CASE("An exception from a replication callback names the module and the copy", "[replicate][threads]") {
  nn::Sequential model;
  model.add(std::make_shared<nn::ReLU>());
  model.add("wiring", std::make_shared<ThrowsOnReplicate>());
  CHECK_THROWS_MATCHES(parallel::replicate(model, test_devices(2)), Error,
                       MessageIs("replicate: the replication callback of 'wiring' failed on copy 1 (" +
                                 test_device(1).str() + "): cannot wire copy 1"));
  // Through DataParallel, the error starts with the call the user made.
  auto owned = std::make_shared<nn::Sequential>();
  owned->add("wiring", std::make_shared<ThrowsOnReplicate>());
  parallel::DataParallel dp(owned, test_devices(2), std::nullopt, {syncbn::testing::test_on_cuda()});
  CHECK_THROWS_MATCHES(dp.forward(Tensor::ones(Shape{2, 3}, DType::Float32, test_device())), Error,
                       MessageIs("DataParallel::forward: replicate: the replication callback of 'wiring' failed on "
                                 "copy 1 (" + test_device(1).str() + "): cannot wire copy 1"));
}

namespace {

// Counts the forwards run on the calling thread: a thread that persists
// between calls keeps counting, a new one starts again at 1.
class ThreadCalls : public nn::Cloneable<ThreadCalls> {
 public:
  std::string describe() const override { return "ThreadCalls"; }
  Tensor forward(const Tensor& x) override {
    thread_local int calls = 0;
    seen_ = ++calls;
    return x;
  }
  Tensor backward(const Tensor& g) override { return g; }
  int seen() const { return seen_; }

 private:
  int seen_ = 0;
};

}  // namespace

TEST_CASE("parallel_apply runs each replica on the same thread in every call on the same replicas",
          "[replicate][threads]") {
  ThreadCalls model;
  auto replicas = parallel::replicate(model, test_devices(2));
  const std::vector<Tensor> xs{Tensor::ones(Shape{2, 3}, DType::Float32, test_device(0)),
                               Tensor::ones(Shape{2, 3}, DType::Float32, test_device(1))};
  for (int call = 1; call <= 3; ++call) {
    parallel::parallel_apply(replicas, xs);
    for (std::size_t i = 0; i < replicas.size(); ++i) {
      CAPTURE(call, i);
      CHECK(static_cast<ThreadCalls&>(replicas[i]).seen() == call);
    }
  }
  // A copy of the replicas starts threads of its own.
  parallel::Replication copy = replicas;
  parallel::parallel_apply(copy, xs);
  for (std::size_t i = 0; i < copy.size(); ++i) CHECK(static_cast<ThreadCalls&>(copy[i]).seen() == 1);
}
