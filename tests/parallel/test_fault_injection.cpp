// Randomized fault injection into DataParallel training with a synchronized
// batch norm: for every injected fault (an exception, a bad argument or a bad
// shard in forward, an exception in backward, a replica that skips the layer,
// calls it twice or arrives late), the step fails without hanging, with the
// expected exception type, naming the culprit replica and layer (and, when
// replicas wait in different layers, where each one waits); the user's
// module is exactly as before the step; and the next step gives the same bits
// as a twin that never saw the fault (docs/design.md, "Guarantees on
// failure"). The default run injects 16 faults, the [.stress] run 150.

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/module_state.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::module_state;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;

namespace {

// Long enough that a good step never times out on a loaded machine under
// the sanitizers (300 ms once did, with a build running beside the tests);
// every fault that waits costs about this much.
constexpr std::chrono::milliseconds kSyncTimeout{600};

enum class Fault { Throw, BadArgument, BadShard, ThrowInBackward, Skip, Twice, Late, kCount };

const char* name_of(Fault f) {
  switch (f) {
    case Fault::Throw: return "throw in forward";
    case Fault::BadArgument: return "InvalidArgument in forward";
    case Fault::BadShard: return "bad shard into the layer";
    case Fault::ThrowInBackward: return "throw in backward";
    case Fault::Skip: return "skip the layer";
    case Fault::Twice: return "call the layer twice";
    case Fault::Late: return "arrive late at the layer";
    case Fault::kCount: break;
  }
  return "?";
}

// The fault of the current step, shared by every copy of the model; the
// twin's plan stays disarmed.
struct FaultPlan {
  std::atomic<bool> armed{false};
  Fault fault = Fault::Throw;
  int replica = 0;
  int point = 0;  // which FaultPoint acts: 0 before the layer, 1 after it

  bool acts(Fault f, int copy_id) const { return armed.load() && fault == f && replica == copy_id; }
  bool acts_at(Fault f, int at, int copy_id) const { return acts(f, copy_id) && point == at; }
};

// Identity that injects the plan's fault when it is the plan's point.
class FaultPoint : public nn::Cloneable<FaultPoint> {
 public:
  FaultPoint(std::shared_ptr<FaultPlan> plan, int point) : plan_(std::move(plan)), point_(point) {}
  std::string describe() const override { return "FaultPoint"; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override { copy_id_ = copy_id; }
  Tensor forward(const Tensor& x) override {
    if (plan_->acts_at(Fault::Throw, point_, copy_id_)) throw std::runtime_error("injected failure");
    if (plan_->acts_at(Fault::BadArgument, point_, copy_id_)) throw InvalidArgument("FaultPoint: injected bad argument");
    if (plan_->acts_at(Fault::BadShard, point_, copy_id_)) return x.view(0, Shape{x.size(0), 3, 2});  // 3 channels
    if (plan_->acts_at(Fault::Late, point_, copy_id_)) std::this_thread::sleep_for(2 * kSyncTimeout);
    return x;
  }
  Tensor backward(const Tensor& g) override {
    if (plan_->acts_at(Fault::ThrowInBackward, point_, copy_id_)) throw std::runtime_error("injected failure");
    return g;
  }

 private:
  std::shared_ptr<FaultPlan> plan_;
  int point_;
  int copy_id_ = -1;
};

// Runs its child "bn" once, or not at all or twice on the faulty replica.
class Gate : public nn::Cloneable<Gate> {
 public:
  Gate(std::shared_ptr<FaultPlan> plan, std::shared_ptr<nn::Module> bn) : plan_(std::move(plan)) {
    register_module("bn", std::move(bn));
  }
  std::string describe() const override { return "Gate"; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override { copy_id_ = copy_id; }
  Tensor forward(const Tensor& x) override {
    if (plan_->acts(Fault::Skip, copy_id_)) return x;
    if (plan_->acts(Fault::Twice, copy_id_)) child(0).forward(x);
    return child(0).forward(x);
  }
  Tensor backward(const Tensor& g) override { return child(0).backward(g); }

 private:
  std::shared_ptr<FaultPlan> plan_;
  int copy_id_ = -1;
};

// Linear(4, 6) -> FaultPoint 0 -> Gate(SyncBatchNorm1d(6)) -> FaultPoint 1 ->
// SyncBatchNorm1d(6) -> ReLU -> Linear(6, 3); the same parameters for the
// same seed. The second batch norm is where a replica that skipped the first
// (or the others, when one calls it twice) waits.
std::shared_ptr<nn::Sequential> make_model(const std::shared_ptr<FaultPlan>& plan) {
  const nn::BatchNormOptions bn_options{.device = test_device()};
  auto model = std::make_shared<nn::Sequential>();
  model->add("fc1", std::make_shared<nn::Linear>(4, 6, nn::LinearOptions{true, 11, DType::Float32, test_device()}));
  model->add("before", std::make_shared<FaultPoint>(plan, 0));
  model->add("block", std::make_shared<Gate>(plan, std::make_shared<nn::SyncBatchNorm1d>(6, bn_options, kSyncTimeout)));
  model->add("after", std::make_shared<FaultPoint>(plan, 1));
  model->add("norm2", std::make_shared<nn::SyncBatchNorm1d>(6, bn_options, kSyncTimeout));
  model->add("relu", std::make_shared<nn::ReLU>());
  model->add("fc2", std::make_shared<nn::Linear>(6, 3, nn::LinearOptions{true, 12, DType::Float32, test_device()}));
  return model;
}

struct StepResult {
  std::vector<double> y, dx;
};

StepResult step(parallel::DataParallel& dp, std::uint64_t seed) {
  const Tensor x = Tensor::randn(Shape{8, 4}, seed, DType::Float32, test_device());
  const Tensor y = dp.forward(x);
  const Tensor dy = Tensor::randn(y.shape(), seed + 1, DType::Float32, test_device());
  return {y.to_vector<double>(), dp.backward(dy).to_vector<double>()};
}

// What the failed step must report: each mention, any of its wordings.
struct Expected {
  const char* type;
  std::vector<std::vector<std::string>> mentions;
};

Expected expected_for(const FaultPlan& plan) {
  const std::string culprit = "replica " + std::to_string(plan.replica) + " on " + test_device(plan.replica).str();
  const std::string waiting = "still waiting for replica(s) [" + std::to_string(plan.replica) + "]";
  // Note [Where the replicas wait]: the culprit's place and another replica's.
  const int other = plan.replica == 0 ? 1 : 0;
  // A replica still waiting, or one that timed out first (its note kept).
  const auto waits_in = [](int replica, const std::string& layer) {
    const std::string place = " in 'SyncBatchNorm1d '" + layer + "' forward' round ";
    return std::vector<std::string>{"replica " + std::to_string(replica) + " waits" + place,
                                    "replica " + std::to_string(replica) + " failed" + place};
  };
  switch (plan.fault) {
    case Fault::Throw: return {"Error", {{"DataParallel: " + culprit + " failed in forward: injected failure"}}};
    case Fault::BadArgument:
      return {"InvalidArgument",
              {{"DataParallel: " + culprit + " failed in forward: FaultPoint: injected bad argument"}}};
    case Fault::BadShard:
      return {"InvalidArgument",
              {{"DataParallel: " + culprit + " failed in forward: SyncBatchNorm1d 'block.bn': input has 3 channels, "
                                             "expected 6"}}};
    case Fault::ThrowInBackward:
      return {"Error", {{"DataParallel: " + culprit + " failed in backward: injected failure"}}};
    case Fault::Skip:
      // The culprit waits in the next layer, the others in the one it
      // skipped; whichever side times out names both.
      return {"Timeout", {{" timed out"}, waits_in(plan.replica, "norm2"), waits_in(other, "block.bn")}};
    case Fault::Late:
      return {"Timeout", {{"SyncBatchNorm1d 'block.bn' forward: round "}, {" timed out"}, {waiting},
                          {"replica " + std::to_string(plan.replica) + " is in no rendezvous"}}};
    case Fault::Twice:
      // The culprit alone enters the layer's next round; the others wait in
      // the next layer.
      return {"Timeout", {{" timed out"}, waits_in(plan.replica, "block.bn"), waits_in(other, "norm2")}};
    case Fault::kCount: break;
  }
  return {"?", {}};
}

// The most derived syncbn type of the exception in flight.
std::string type_of_current_exception() {
  try {
    throw;
  } catch (const Timeout&) {
    return "Timeout";
  } catch (const CommError&) {
    return "CommError";
  } catch (const InvalidArgument&) {
    return "InvalidArgument";
  } catch (const Error&) {
    return "Error";
  } catch (...) {
    return "not a syncbn::Error";
  }
}

std::string message_of_current_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "";
  }
}

void inject_faults(int trials, std::uint64_t stream) {
  const std::uint64_t seed = syncbn::testing::kSeed + stream;
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < trials; ++trial) {
    const int k = 2 + static_cast<int>(rng() % 3);
    auto plan = std::make_shared<FaultPlan>();
    auto twin_plan = std::make_shared<FaultPlan>();  // never armed
    auto model = make_model(plan);
    auto twin = make_model(twin_plan);
    parallel::DataParallel dp(model, test_devices(k), std::nullopt, {syncbn::testing::test_on_cuda()});
    parallel::DataParallel twin_dp(twin, test_devices(k), std::nullopt, {syncbn::testing::test_on_cuda()});
    const std::uint64_t data = seed + 1000 * static_cast<std::uint64_t>(trial);
    step(dp, data);  // a good step first: gradients and running statistics set
    step(twin_dp, data);

    plan->fault = static_cast<Fault>(rng() % static_cast<std::uint64_t>(Fault::kCount));
    plan->replica = static_cast<int>(rng() % static_cast<std::uint64_t>(k));
    // Bad shards and late arrivals act before the layer; the others at
    // either point (a backward failure after the layer's backward, or before).
    plan->point = plan->fault == Fault::BadShard || plan->fault == Fault::Late ? 0 : static_cast<int>(rng() % 2);
    INFO("trial " << trial << ": " << k << " replicas, " << name_of(plan->fault) << " on replica " << plan->replica
                  << " at point " << plan->point);
    const Expected expected = expected_for(*plan);
    const auto before = module_state(*model);

    plan->armed = true;
    std::string type = "no exception", message;
    try {
      step(dp, data + 10);
    } catch (...) {
      type = type_of_current_exception();
      message = message_of_current_exception();
    }
    plan->armed = false;
    INFO("message: " << message);
    CHECK(type == expected.type);
    for (const auto& wordings : expected.mentions) {
      INFO("one of: " << Catch::Detail::stringify(wordings));
      CHECK(std::any_of(wordings.begin(), wordings.end(),
                        [&](const std::string& w) { return message.find(w) != std::string::npos; }));
    }
    CHECK(module_state(*model) == before);

    // The next step equals the twin's, which never saw the fault.
    const StepResult got = step(dp, data + 20);
    const StepResult want = step(twin_dp, data + 20);
    CHECK(got.y == want.y);
    CHECK(got.dx == want.dx);
    CHECK(module_state(*model) == module_state(*twin));
  }
}

}  // namespace

TEST_CASE("Injected faults fail the step cleanly, name the culprit and leave the module as before",
          "[replicate][threads]") {
  inject_faults(16, 1);
}

TEST_CASE("Many injected faults fail the step cleanly, name the culprit and leave the module as before",
          "[replicate][.stress][threads]") {
  inject_faults(150, 2);
}
