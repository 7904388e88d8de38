// DataParallel failures: a replica that throws is reported with its replica
// and device, every other replica is released (also from a rendezvous),
// nothing hangs, and the next step works.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "support/test_layers.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::CallLog;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using syncbn::testing::Rendezvous;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;
using syncbn::testing::ThrowAt;

namespace {

parallel::DataParallelOptions dp_options() { return {syncbn::testing::test_on_cuda()}; }

std::shared_ptr<nn::Sequential> model_with(std::shared_ptr<nn::Module> middle) {
  auto m = std::make_shared<nn::Sequential>();
  m->add(std::make_shared<nn::Linear>(4, 4, nn::LinearOptions{true, 1, DType::Float32, test_device()}));
  m->add(std::move(middle));
  m->add(std::make_shared<nn::Linear>(4, 2, nn::LinearOptions{true, 2, DType::Float32, test_device()}));
  return m;
}

Tensor batch() { return Tensor::randn(Shape{8, 4}, syncbn::testing::kSeed, DType::Float32, test_device()); }

bool finite(const Tensor& t) {
  const auto v = t.to_vector<double>();
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

}  // namespace

TEST_CASE("A replica that throws at step 5 is reported and the next steps work", "[replicate][threads]") {
  parallel::DataParallel dp(model_with(std::make_shared<ThrowAt>(2, 5)), test_devices(4), std::nullopt, dp_options());
  for (int step = 1; step <= 8; ++step) {
    INFO("step " << step);
    if (step == 5) {
      CHECK_THROWS_MATCHES(dp.forward(batch()), Error,
                           MessageIs("DataParallel: replica 2 on " + test_device(2).str() +
                                     " failed in forward: boom at call 5"));
      CHECK_THROWS_AS(dp.backward(Tensor::ones(Shape{8, 2}, DType::Float32, test_device())), InvalidArgument);
      continue;
    }
    const Tensor y = dp.forward(batch());
    CHECK(finite(y));
    CHECK(finite(dp.backward(Tensor::ones(Shape{8, 2}, DType::Float32, test_device()))));
  }
  CHECK(dp.replication_count() == 1);
}

TEST_CASE("A replica that throws in backward is reported and leaves no partial gradients", "[replicate][threads]") {
  auto model = model_with(std::make_shared<ThrowAt>(1, 2, /*in_backward=*/true));
  parallel::DataParallel dp(model, test_devices(3), std::nullopt, dp_options());
  const Tensor ones = Tensor::ones(Shape{8, 2}, DType::Float32, test_device());
  dp.forward(batch());
  dp.backward(ones);
  const auto after_one = model->parameters()[0]->grad.to_vector<double>();
  dp.forward(batch());
  CHECK_THROWS_MATCHES(dp.backward(ones), Error, MessageContains("replica 1 on " + test_device(1).str() +
                                                                 " failed in backward: boom at call 2"));
  CHECK(model->parameters()[0]->grad.to_vector<double>() == after_one);  // the failed step added nothing
  dp.forward(batch());
  dp.backward(ones);
  const auto after_two = model->parameters()[0]->grad.to_vector<double>();
  for (std::size_t i = 0; i < after_one.size(); ++i)
    REQUIRE_THAT(after_two[i], Catch::Matchers::WithinRel(2 * after_one[i], 1e-5) || Catch::Matchers::WithinAbs(2 * after_one[i], 1e-6));
}

TEST_CASE("A failing replica releases the replicas waiting for it in a rendezvous", "[replicate][threads]") {
  auto log = std::make_shared<CallLog>();
  auto middle = std::make_shared<nn::Sequential>();
  middle->add(std::make_shared<ThrowAt>(2, 3));
  middle->add(std::make_shared<Rendezvous>(log));  // 60 s timeout: release must come from the abort
  parallel::DataParallel dp(model_with(middle), test_devices(4), std::nullopt, dp_options());
  dp.forward(batch());
  dp.forward(batch());
  log->lines.clear();
  CHECK_THROWS_MATCHES(dp.forward(batch()), Error,
                       MessageIs("DataParallel: replica 2 on " + test_device(2).str() + " failed in forward: boom at call 3"));
  // Replicas 0, 1 and 3 were inside the rendezvous and left it through the abort.
  REQUIRE(log->lines.size() == 3);
  for (const auto& line : log->lines) {
    CHECK_THAT(line, Catch::Matchers::Contains("released"));
    CHECK_THAT(line, Catch::Matchers::Contains("aborted by replica 2"));
  }
  log->lines.clear();
  dp.forward(batch());  // the rendezvous was reset: the next step completes
  CHECK(log->lines.size() == 4);
}

TEST_CASE("A replica's syncbn error keeps its type", "[replicate][threads]") {
  parallel::DataParallel dp(model_with(std::make_shared<ThrowAt>(1, 1, false, ThrowAt::Kind::InvalidArgument)),
                            test_devices(2), std::nullopt, dp_options());
  CHECK_THROWS_MATCHES(dp.forward(batch()), InvalidArgument,
                       MessageIs("DataParallel: replica 1 on " + test_device(1).str() +
                                 " failed in forward: ThrowAt: bad shard at call 1"));
}
