// A module's own forward is all or nothing (Note [All-or-nothing forward]):
// when it fails part-way, the batch-norm layers that ran before the failure
// keep neither their running statistics' update nor their kept or
// accumulated statistics, and a backward of the half-done forward is
// refused. Device-generic.

#include <catch2/catch.hpp>

#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/module_state.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/forward_transaction.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/residual.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"

using namespace syncbn;
using syncbn::testing::kSeed;
using syncbn::testing::MessageContains;
using syncbn::testing::module_state;
using syncbn::testing::test_device;

namespace {

nn::BatchNormOptions options_with(nn::EmaUpdate ema) {
  nn::BatchNormOptions options;
  options.ema_update = ema;
  options.device = test_device();
  return options;
}

std::shared_ptr<nn::Linear> linear(std::int64_t in, std::int64_t out) {
  return std::make_shared<nn::Linear>(in, out, nn::LinearOptions{true, 3, DType::Float32, test_device()});
}

// (8, 4, 2): a batch norm 1d takes it as (N, C, L); a Linear refuses it.
Tensor three_d() { return Tensor::randn(Shape{8, 4, 2}, kSeed + 300, DType::Float32, test_device()); }

// Runs a batch norm, then fails unless it opened a transaction first: a
// module of the application's own that calls children.
class Composite : public nn::Cloneable<Composite> {
 public:
  explicit Composite(bool transaction) : transaction_(transaction) {
    register_module("bn", std::make_shared<nn::BatchNorm1d>(4, options_with(nn::EmaUpdate::Internal)));
  }
  std::string describe() const override { return "Composite"; }
  Tensor forward(const Tensor& x) override {
    std::optional<nn::ForwardTransaction> transaction;
    if (transaction_) transaction.emplace();
    child(0).forward(x);
    throw std::runtime_error("Composite: the step after the batch norm failed");
  }
  Tensor backward(const Tensor& g) override { return g; }

 private:
  bool transaction_;
};

}  // namespace

TEST_CASE("A Sequential whose forward fails after a batch norm leaves every running statistic as it was",
          "[nn][transaction]") {
  const bool sync = GENERATE(false, true);
  CAPTURE(sync, kSeed);
  const auto bn = [&]() -> std::shared_ptr<nn::Module> {
    if (sync) return std::make_shared<nn::SyncBatchNorm1d>(4, options_with(nn::EmaUpdate::Internal));
    return std::make_shared<nn::BatchNorm1d>(4, options_with(nn::EmaUpdate::Internal));
  };
  // Nested: the inner Sequential's forward completes before the outer fails.
  auto inner = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{bn()});
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{inner, bn(), linear(4, 2)});
  model->forward(Tensor::randn(Shape{8, 4}, kSeed + 301, DType::Float32, test_device()));
  const auto before = module_state(*model);
  CHECK_THROWS_AS(model->forward(three_d()), InvalidArgument);
  CHECK(module_state(*model) == before);
  CHECK_THROWS_MATCHES(model->backward(Tensor::ones(Shape{8, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageContains("Sequential: backward after a failed forward, expected a successful forward"));
  // The next forward counts from where the state was.
  model->forward(Tensor::randn(Shape{8, 4}, kSeed + 302, DType::Float32, test_device()));
  CHECK(model->named_buffers().back().second->item() == 2.0);
  model->backward(Tensor::ones(Shape{8, 2}, DType::Float32, test_device()));
}

TEST_CASE("A failed forward drops the statistics it kept or accumulated", "[nn][transaction]") {
  auto deferred = std::make_shared<nn::BatchNorm1d>(4, options_with(nn::EmaUpdate::Deferred));
  auto accumulating = std::make_shared<nn::BatchNorm1d>(4, options_with(nn::EmaUpdate::Internal));
  accumulating->accumulate_statistics(3);
  nn::Sequential model(std::vector<std::shared_ptr<nn::Module>>{deferred, accumulating, linear(4, 2)});
  model.forward(Tensor::randn(Shape{8, 4}, kSeed + 303, DType::Float32, test_device()));
  REQUIRE(deferred->pending_running_updates() == 1);
  REQUIRE(accumulating->accumulated() == 1);
  CHECK_THROWS_AS(model.forward(three_d()), InvalidArgument);
  CHECK(deferred->pending_running_updates() == 1);
  CHECK(accumulating->accumulated() == 1);
}

TEST_CASE("A Residual whose branches disagree leaves the body's batch norm as it was", "[nn][transaction]") {
  auto body = std::make_shared<nn::Sequential>(
      std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::BatchNorm1d>(4, options_with(nn::EmaUpdate::Internal)),
                                               linear(4, 3)});
  nn::Residual block(body);
  const auto before = module_state(block);
  CHECK_THROWS_AS(block.forward(Tensor::randn(Shape{8, 4}, kSeed + 304, DType::Float32, test_device())), InvalidArgument);
  CHECK(module_state(block) == before);
}

TEST_CASE("A module of the application's own gets the guarantee by opening a ForwardTransaction", "[nn][transaction]") {
  const bool transaction = GENERATE(false, true);
  CAPTURE(transaction);
  Composite model(transaction);
  const auto before = module_state(model);
  CHECK_THROWS_AS(model.forward(Tensor::randn(Shape{8, 4}, kSeed + 305, DType::Float32, test_device())),
                  std::runtime_error);
  // Without one, the batch norm's own forward completed and its update stays
  // (what PyTorch does in every case).
  CHECK((module_state(model) == before) == transaction);
}

TEST_CASE("Transactions nest: an inner one that fails undoes only its own part", "[nn][transaction]") {
  nn::BatchNorm1d first(4, options_with(nn::EmaUpdate::Internal)), second(4, options_with(nn::EmaUpdate::Internal));
  const Tensor x = Tensor::randn(Shape{8, 4}, kSeed + 306, DType::Float32, test_device());
  {
    nn::ForwardTransaction outer;
    first.forward(x);
    try {
      nn::ForwardTransaction inner;
      second.forward(x);
      throw std::runtime_error("inner step failed");
    } catch (const std::runtime_error&) {
    }
    CHECK(second.num_batches_tracked().item() == 0);
    CHECK(first.num_batches_tracked().item() == 1);
  }
  CHECK(first.num_batches_tracked().item() == 1);  // the outer one completed
  CHECK_FALSE(nn::ForwardTransaction::active());
}
