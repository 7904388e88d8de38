// DataParallel: equivalence with single-device training, buffers, persistence,
// small batches, the free functions, and argument errors.

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <vector>

#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/loss.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/optim/sgd.hpp"
#include "syncbn/parallel/data_parallel.hpp"

using namespace syncbn;
using syncbn::testing::check_close;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using syncbn::testing::test_devices;
using syncbn::testing::Tolerance;

namespace {

parallel::DataParallelOptions dp_options() { return {syncbn::testing::test_on_cuda()}; }

nn::LinearOptions lin(std::uint64_t seed) { return {true, seed, DType::Float32, test_device()}; }

std::shared_ptr<nn::Sequential> mlp(bool with_bn) {
  auto m = std::make_shared<nn::Sequential>();
  m->add(std::make_shared<nn::Linear>(6, 16, lin(1)));
  if (with_bn) m->add(std::make_shared<nn::BatchNorm1d>(16, nn::BatchNormOptions{.device = test_device()}));
  m->add(std::make_shared<nn::ReLU>());
  m->add(std::make_shared<nn::Linear>(16, 16, lin(2)));
  m->add(std::make_shared<nn::ReLU>());
  m->add(std::make_shared<nn::Linear>(16, 3, lin(3)));
  return m;
}

// `steps` SGD steps on one batch stream; returns the losses.
std::vector<double> train(const std::function<Tensor(const Tensor&)>& forward,
                          const std::function<void(const Tensor&)>& backward, nn::Module& module, int steps,
                          std::int64_t batch) {
  optim::SGD sgd(module.parameters(), optim::SGDOptions{0.1, 0.9});
  nn::CrossEntropyLoss loss;
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    const Tensor x = Tensor::randn(Shape{batch, 6}, syncbn::testing::kSeed + static_cast<std::uint64_t>(s), DType::Float32,
                                   test_device());
    std::vector<std::int64_t> labels;
    for (std::int64_t i = 0; i < batch; ++i) labels.push_back((i * 7 + s) % 3);
    const Tensor t = Tensor::from_vector(labels, Shape{batch}, test_device());
    sgd.zero_grad();
    losses.push_back(loss.forward(forward(x), t).item());
    backward(loss.backward());
    sgd.step();
  }
  return losses;
}

// Replica `replica` returns its shard without the last row (or a scalar);
// the others return theirs whole. Backward pads the missing row's gradient
// with zeros.
class DropsLastRow : public nn::Cloneable<DropsLastRow> {
 public:
  DropsLastRow(int replica, bool scalar) : replica_(replica), scalar_(scalar) {}
  std::string describe() const override { return "DropsLastRow"; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override { copy_id_ = copy_id; }
  Tensor forward(const Tensor& x) override {
    rows_ = x.size(0);
    if (copy_id_ != replica_) return x;
    if (scalar_) return Tensor::zeros(Shape{}, x.dtype(), x.device());
    return x.rows(0, rows_ - 1).clone();
  }
  Tensor backward(const Tensor& g) override {
    if (g.size(0) == rows_) return g;
    Tensor dx = Tensor::zeros(g.shape().with_rows(rows_), g.dtype(), g.device());
    dx.rows(0, rows_ - 1).copy_(g);
    return dx;
  }

 private:
  int replica_;
  bool scalar_;
  int copy_id_ = -1;
  std::int64_t rows_ = 0;
};

// The tolerance of multi-replica against single-device float32 training:
// gradients are summed per replica and then across replicas, a different
// rounding order than one sum over the batch.
constexpr Tolerance kTrainTol{1e-5, 1e-6};

}  // namespace

TEST_CASE("SGD steps under DataParallel match single-device training on the full batch", "[replicate][threads]") {
  const int k = GENERATE(1, 2, 3, 4);
  const std::int64_t batch = GENERATE(10, 3);  // 10: uneven shards for K = 3, 4; 3: empty shards for K = 4
  CAPTURE(k, batch, syncbn::testing::kSeed);
  auto single = mlp(false);
  auto multi = std::static_pointer_cast<nn::Sequential>(single->clone());
  const auto want = train([&](const Tensor& x) { return single->forward(x); },
                          [&](const Tensor& g) { single->backward(g); }, *single, 5, batch);
  parallel::DataParallel dp(multi, test_devices(k), std::nullopt, dp_options());
  const auto got = train([&](const Tensor& x) { return dp.forward(x); }, [&](const Tensor& g) { dp.backward(g); },
                         *multi, 5, batch);
  check_close(got, want, kTrainTol, "losses");
  auto a = single->named_parameters(), b = multi->named_parameters();
  for (std::size_t j = 0; j < a.size(); ++j)
    check_close(b[j].second->value, a[j].second->value.to_vector<double>(), kTrainTol, "parameter " + a[j].first);
  CHECK(dp.replication_count() == (k == 1 ? 0U : 1U));
}

TEST_CASE("Per-replica BatchNorm with small shards departs from full-batch BatchNorm", "[replicate][threads]") {
  // The problem SyncBatchNorm solves: each replica normalises with its own
  // 2-sample statistics instead of the batch's.
  auto single = mlp(true);
  auto multi = std::static_pointer_cast<nn::Sequential>(single->clone());
  parallel::DataParallel dp(multi, test_devices(4), std::nullopt, dp_options());
  const Tensor x = Tensor::randn(Shape{8, 6}, syncbn::testing::kSeed, DType::Float32, test_device());
  const auto a = single->forward(x).to_vector<double>();
  const auto b = dp.forward(x).to_vector<double>();
  double max_diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, std::abs(a[i] - b[i]));
  CHECK(max_diff > 0.05);
}

TEST_CASE("Replica 0's running statistics land on the module and drive its eval mode", "[replicate][threads]") {
  auto model = std::make_shared<nn::Sequential>();
  auto bn = std::make_shared<nn::BatchNorm1d>(3, nn::BatchNormOptions{.device = test_device()});
  model->add(bn);
  parallel::DataParallel dp(model, test_devices(2), std::nullopt, dp_options());
  const Tensor x = Tensor::randn(Shape{8, 3}, syncbn::testing::kSeed, DType::Float32, test_device(), 4.0, 2.0);
  dp.forward(x);
  // Replica 0 saw rows 0..3: running_mean = 0.1 * their mean.
  const auto xv = x.to_vector<double>();
  std::vector<double> want(3, 0.0);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) want[static_cast<std::size_t>(j)] += 0.1 * xv[static_cast<std::size_t>(i * 3 + j)] / 4.0;
  check_close(bn->running_mean(), want, {1e-5, 1e-6}, "running_mean");
  CHECK(bn->num_batches_tracked().item() == 1);
  dp.eval();
  const auto through_dp = dp.forward(x).to_vector<double>();
  check_close(model->forward(x), through_dp, {1e-6, 1e-6}, "eval with and without DataParallel");
}

TEST_CASE("A batch smaller than the number of devices runs with empty shards", "[replicate][threads]") {
  auto single = mlp(false);
  auto multi = std::static_pointer_cast<nn::Sequential>(single->clone());
  parallel::DataParallel dp(multi, test_devices(4), std::nullopt, dp_options());
  const Tensor x = Tensor::randn(Shape{2, 6}, syncbn::testing::kSeed, DType::Float32, test_device());
  const Tensor y = dp.forward(x);
  CHECK(y.shape() == Shape{2, 3});
  check_close(y, single->forward(x).to_vector<double>(), {1e-6, 1e-7}, "output");
  const Tensor dx = dp.backward(Tensor::ones(Shape{2, 3}, DType::Float32, test_device()));
  CHECK(dx.shape() == Shape{2, 6});
}

TEST_CASE("Replicas persist across steps and are rebuilt when the module changes", "[replicate][threads]") {
  auto model = mlp(false);
  parallel::DataParallel dp(model, test_devices(2), std::nullopt, dp_options());
  const Tensor x = Tensor::randn(Shape{4, 6}, syncbn::testing::kSeed, DType::Float32, test_device());
  for (int s = 0; s < 3; ++s) {
    dp.forward(x);
    dp.backward(Tensor::ones(Shape{4, 3}, DType::Float32, test_device()));
  }
  CHECK(dp.replication_count() == 1);
  model->replace_child("1", std::make_shared<nn::ReLU>());  // same structure, new module object
  model->replace_child("2", std::make_shared<nn::Linear>(16, 16, lin(9)));  // new parameters
  const Tensor y = dp.forward(x);
  CHECK(dp.replication_count() == 2);
  check_close(y, model->forward(x).to_vector<double>(), {1e-6, 1e-7}, "output after the change");
  model->parameters()[0]->value = model->parameters()[0]->value.clone();  // storage replaced
  dp.forward(x);
  CHECK(dp.replication_count() == 3);
}

TEST_CASE("parallel_apply and parallel_backward run replicas made by replicate", "[replicate][threads]") {
  auto model = mlp(false);
  auto replicas = parallel::replicate(*model, test_devices(3));
  const Tensor x = Tensor::randn(Shape{7, 6}, syncbn::testing::kSeed, DType::Float32, test_device());
  const auto chunks = parallel::scatter(x, test_devices(3));
  const auto outputs = parallel::parallel_apply(replicas, chunks);
  const Tensor y = parallel::gather(outputs, test_device());
  check_close(y, model->forward(x).to_vector<double>(), {1e-6, 1e-7}, "gathered output");
  std::vector<Tensor> grads;
  for (const auto& o : outputs) grads.push_back(Tensor::ones(o.shape(), DType::Float32, o.device()));
  const auto dx = parallel::parallel_backward(replicas, grads);
  CHECK(dx.size() == 3);
  CHECK_THROWS_MATCHES(parallel::parallel_apply(replicas, {x}), InvalidArgument,
                       MessageIs("parallel_apply: 1 inputs, expected 3 (one per replica)"));
}

TEST_CASE("DataParallel rejects bad devices, inputs and call orders", "[replicate][threads]") {
  auto model = mlp(false);
  CHECK_THROWS_MATCHES(parallel::DataParallel(model, {}), InvalidArgument,
                       MessageIs("DataParallel: 0 devices, expected 1 to 64"));
  std::vector<Device> too_many;
  for (int i = 0; i <= core::kMaxReplicas; ++i) too_many.push_back(Device::cpu(i));
  CHECK_THROWS_MATCHES(parallel::DataParallel(model, too_many), InvalidArgument,
                       MessageIs("DataParallel: 65 devices, expected 1 to 64"));
  CHECK_THROWS_MATCHES(parallel::DataParallel(nullptr, test_devices(1)), InvalidArgument,
                       MessageIs("DataParallel: module is null, expected a module"));
  CHECK_THROWS_MATCHES(
      parallel::DataParallel(model, {test_device(), test_device()}), InvalidArgument,
      MessageIs("DataParallel: device " + test_device().str() +
                " is listed twice, expected distinct devices (set allow_shared_devices for logical replicas sharing a GPU)"));
  if (!syncbn::testing::test_on_cuda()) {
    CHECK_THROWS_MATCHES(parallel::DataParallel(model, {Device::cpu(1), Device::cpu(2)}), InvalidArgument,
                         MessageIs("DataParallel: parameter '0.weight' is on cpu:0, expected cpu:1 (devices[0])"));
  } else {
    parallel::DataParallel dp(model, test_devices(2), std::nullopt, dp_options());
    CHECK_NOTHROW(dp.forward(Tensor::zeros(Shape{2, 6}, DType::Float32, Device::cpu())));  // host input is fine
  }
  parallel::DataParallel dp(model, test_devices(2), std::nullopt, dp_options());
  CHECK_THROWS_MATCHES(dp.backward(Tensor::zeros(Shape{2, 3}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("DataParallel::backward: no forward to differentiate, expected a successful forward first"));
  CHECK_THROWS_MATCHES(dp.forward(Tensor::zeros(Shape{}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("DataParallel::forward: input is a scalar, expected a batch (rank >= 1)"));
  dp.forward(Tensor::zeros(Shape{4, 6}, DType::Float32, test_device()));
  CHECK_THROWS_MATCHES(dp.backward(Tensor::zeros(Shape{4, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("DataParallel::backward: grad_output has shape (4, 2), expected (4, 3) (the output's)"));
  // A replica's own argument error keeps its type and names the replica.
  CHECK_THROWS_MATCHES(dp.forward(Tensor::zeros(Shape{4, 5}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("DataParallel: replica 0 on " + test_device(0).str() +
                                 " failed in forward: Linear(in_features=6, out_features=16, bias=true): input has 5 "
                                 "features, expected 6"));
}

TEST_CASE("A replica may return other rows than it got: backward gives it the gradient of its own rows",
          "[replicate][threads]") {
  auto model = std::make_shared<DropsLastRow>(1, false);
  parallel::DataParallel dp(model, test_devices(2), std::nullopt, dp_options());
  const Tensor x = Tensor::randn(Shape{6, 2}, syncbn::testing::kSeed, DType::Float32, test_device());
  const Tensor y = dp.forward(x);  // rows 0-2 from replica 0, rows 3-4 from replica 1
  REQUIRE(y.shape() == Shape({5, 2}));
  const Tensor dy = Tensor::randn(Shape{5, 2}, syncbn::testing::kSeed + 1, DType::Float32, test_device());
  const Tensor dx = dp.backward(dy);
  std::vector<double> want = dy.to_vector<double>();
  want.insert(want.end(), {0.0, 0.0});  // the dropped row's gradient
  check_close(dx, want, Tolerance{0, 0}, "grad_input");
}

TEST_CASE("A replica that returns a scalar is named at forward", "[replicate][threads]") {
  auto model = std::make_shared<DropsLastRow>(1, true);
  parallel::DataParallel dp(model, test_devices(2), std::nullopt, dp_options());
  CHECK_THROWS_MATCHES(dp.forward(Tensor::ones(Shape{4, 2}, DType::Float32, test_device())), InvalidArgument,
                       MessageIs("DataParallel::forward: replica 1 on " + test_device(1).str() +
                                 " returned a scalar, expected a tensor of rank >= 1 (rows to gather)"));
}
