// convert_sync_batchnorm keeps parameters, buffers, options and the mode.

#include <catch2/catch.hpp>

#include <memory>
#include <typeinfo>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"

using namespace syncbn;
using syncbn::testing::MessageIs;
using syncbn::testing::test_device;
using namespace std::chrono_literals;

TEST_CASE("convert_sync_batchnorm replaces every BatchNorm and keeps its state", "[nn]") {
  nn::BatchNormOptions custom;
  custom.eps = 1e-3;
  custom.momentum = std::nullopt;
  custom.eps_mode = nn::EpsMode::Clamp;
  custom.device = test_device();
  auto bn1 = std::make_shared<nn::BatchNorm1d>(4, custom);
  auto bn2 = std::make_shared<nn::BatchNorm2d>(3, nn::BatchNormOptions{.affine = false, .device = test_device()});
  auto bn3 = std::make_shared<nn::BatchNorm3d>(2, nn::BatchNormOptions{.track_running_stats = false, .device = test_device()});
  auto linear = std::make_shared<nn::Linear>(4, 4, nn::LinearOptions{.device = test_device()});
  auto inner = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{bn2, bn3});
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{linear, bn1, inner});
  // State that a conversion must not drop.
  bn1->weight().value.fill_(2.5);
  bn1->bias().grad.fill_(0.75);
  bn1->running_mean().fill_(-1.0);
  bn1->running_var().fill_(4.0);
  bn1->num_batches_tracked().fill_(17);
  bn1->eval();
  const Tensor weight = bn1->weight().value;

  auto converted = nn::convert_sync_batchnorm(model, 250ms);
  CHECK(converted == model);
  CHECK(model->children()[0].second == linear);  // other modules untouched
  auto& s1 = dynamic_cast<nn::SyncBatchNorm1d&>(*model->children()[1].second);
  auto& s2 = dynamic_cast<nn::SyncBatchNorm2d&>(*inner->children()[0].second);
  auto& s3 = dynamic_cast<nn::SyncBatchNorm3d&>(*inner->children()[1].second);
  CHECK(s1.describe() == "SyncBatchNorm1d(4, eps=0.001, momentum=None, affine=true, track_running_stats=true, eps_mode=clamp)");
  CHECK(s1.sync_timeout() == 250ms);
  CHECK(s1.weight().value.shares_storage_with(weight));
  CHECK(s1.weight().value.to_vector<float>() == std::vector<float>(4, 2.5f));
  CHECK(s1.bias().grad.to_vector<float>() == std::vector<float>(4, 0.75f));
  CHECK(s1.running_mean().to_vector<float>() == std::vector<float>(4, -1.0f));
  CHECK(s1.running_var().to_vector<float>() == std::vector<float>(4, 4.0f));
  CHECK(s1.num_batches_tracked().item() == 17);
  CHECK_FALSE(s1.is_training());
  CHECK_FALSE(s2.options().affine);
  CHECK(s2.is_training());
  CHECK_FALSE(s3.options().track_running_stats);
  // linear (2) + bn1 (2) + bn3 (2, affine by default); bn2 is not affine.
  CHECK(model->named_parameters().size() == 6);
  CHECK(s3.options().affine);
}

TEST_CASE("convert_sync_batchnorm converts a BatchNorm root and leaves synchronized layers alone", "[nn]") {
  auto root = std::make_shared<nn::BatchNorm2d>(3, nn::BatchNormOptions{.device = test_device()});
  auto converted = nn::convert_sync_batchnorm(root);
  const nn::Module& converted_module = *converted;
  CHECK(typeid(converted_module) == typeid(nn::SyncBatchNorm2d));
  CHECK(nn::convert_sync_batchnorm(converted) == converted);
  auto relu = std::make_shared<nn::ReLU>();
  CHECK(nn::convert_sync_batchnorm(relu) == relu);
  CHECK_THROWS_MATCHES(nn::convert_sync_batchnorm(nullptr), InvalidArgument,
                       MessageIs("convert_sync_batchnorm: module is null, expected a module"));
}

namespace {
// A user's batch norm with its own behaviour.
class ScaledBatchNorm : public nn::Cloneable<ScaledBatchNorm, nn::BatchNorm1d> {
 public:
  using Cloneable::Cloneable;
  Tensor forward(const Tensor& x) override { return BatchNorm1d::forward(x); }
};
}  // namespace

TEST_CASE("convert_sync_batchnorm refuses a subclass of a batch-norm layer instead of dropping its overrides", "[nn]") {
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<ScaledBatchNorm>(3, nn::BatchNormOptions{.device = test_device()}));
  CHECK_THROWS_MATCHES(nn::convert_sync_batchnorm(model), InvalidArgument,
                       MessageIs("convert_sync_batchnorm: BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=true, "
                                 "track_running_stats=true) is a subclass of BatchNorm1d, expected BatchNorm1d, "
                                 "BatchNorm2d or BatchNorm3d itself (converting it would drop its overrides; give it a "
                                 "synchronized version of its own); nothing was converted"));
}

TEST_CASE("A refused conversion leaves the tree exactly as it was, also after converting earlier children", "[nn]") {
  // The plain layer comes first: a conversion that replaced as it walked
  // would have replaced it before meeting the subclass.
  auto plain = std::make_shared<nn::BatchNorm1d>(3, nn::BatchNormOptions{.device = test_device()});
  auto tuned = std::make_shared<ScaledBatchNorm>(3, nn::BatchNormOptions{.device = test_device()});
  auto inner = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::BatchNorm1d>(3, nn::BatchNormOptions{.device = test_device()})});
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{plain, inner, tuned});
  CHECK_THROWS_AS(nn::convert_sync_batchnorm(model), InvalidArgument);
  CHECK(model->children()[0].second == plain);
  const nn::Module& inner_bn = *inner->children()[0].second;  // typeid of a plain reference: nothing to evaluate
  CHECK(typeid(inner_bn) == typeid(nn::BatchNorm1d));
  CHECK(model->children()[2].second == tuned);

  CHECK_THROWS_MATCHES(nn::convert_sync_batchnorm(model, -1ms), InvalidArgument,
                       MessageIs("convert_sync_batchnorm: sync_timeout is -1 ms, expected >= 0 (0 waits forever)"));
  CHECK(model->children()[0].second == plain);

  // Without the subclass the same tree converts.
  auto fine = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{plain, inner});
  CHECK(nn::convert_sync_batchnorm(fine) == fine);
  CHECK(dynamic_cast<nn::SyncBatchNorm1d*>(fine->children()[0].second.get()) != nullptr);
  CHECK(dynamic_cast<nn::SyncBatchNorm1d*>(inner->children()[0].second.get()) != nullptr);
}

TEST_CASE("revert_sync_batchnorm turns every SyncBatchNorm back into BatchNorm and keeps its state", "[nn]") {
  nn::BatchNormOptions custom;
  custom.eps = 1e-3;
  custom.momentum = std::nullopt;
  custom.eps_mode = nn::EpsMode::Clamp;
  custom.device = test_device();
  auto bn1 = std::make_shared<nn::BatchNorm1d>(4, custom);
  auto bn2 = std::make_shared<nn::BatchNorm2d>(3, nn::BatchNormOptions{.affine = false, .device = test_device()});
  auto linear = std::make_shared<nn::Linear>(4, 4, nn::LinearOptions{.device = test_device()});
  auto inner = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{bn2});
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{linear, bn1, inner});
  bn1->weight().value.fill_(2.5);
  bn1->bias().grad.fill_(0.75);
  bn1->running_mean().fill_(-1.0);
  bn1->running_var().fill_(4.0);
  bn1->num_batches_tracked().fill_(17);
  bn1->eval();
  nn::Parameter* weight = &bn1->weight();

  nn::convert_sync_batchnorm(model, 250ms);
  auto reverted = nn::revert_sync_batchnorm(model);
  CHECK(reverted == model);
  CHECK(model->children()[0].second == linear);
  const auto& r1 = *model->children()[1].second;
  const auto& r2 = *inner->children()[0].second;
  CHECK(typeid(r1) == typeid(nn::BatchNorm1d));
  CHECK(typeid(r2) == typeid(nn::BatchNorm2d));
  auto& b1 = dynamic_cast<nn::BatchNorm1d&>(*model->children()[1].second);
  CHECK(b1.describe() == "BatchNorm1d(4, eps=0.001, momentum=None, affine=true, track_running_stats=true, eps_mode=clamp)");
  CHECK(&b1.weight() == weight);  // the very Parameter object: an optimizer made before keeps working
  CHECK(b1.bias().grad.to_vector<float>() == std::vector<float>(4, 0.75f));
  CHECK(b1.running_mean().to_vector<float>() == std::vector<float>(4, -1.0f));
  CHECK(b1.running_var().to_vector<float>() == std::vector<float>(4, 4.0f));
  CHECK(b1.num_batches_tracked().item() == 17);
  CHECK_FALSE(b1.is_training());
  CHECK(dynamic_cast<const nn::BatchNorm2d&>(r2).is_training());

  // A SyncBatchNorm root becomes a new BatchNorm root.
  auto root = std::make_shared<nn::SyncBatchNorm3d>(2, nn::BatchNormOptions{.device = test_device()});
  auto plain = nn::revert_sync_batchnorm(root);
  const nn::Module& plain_root = *plain;
  CHECK(typeid(plain_root) == typeid(nn::BatchNorm3d));
  // A model without synchronized layers is returned as it is.
  CHECK(nn::revert_sync_batchnorm(linear) == linear);
}

namespace {
class TunedSyncBatchNorm : public nn::SyncBatchNorm2d {
 public:
  using SyncBatchNorm2d::SyncBatchNorm2d;
};
}  // namespace

TEST_CASE("revert_sync_batchnorm refuses a null module and a subclass, changing nothing", "[nn]") {
  CHECK_THROWS_MATCHES(nn::revert_sync_batchnorm(nullptr), InvalidArgument,
                       MessageIs("revert_sync_batchnorm: module is null, expected a module"));
  auto sync = std::make_shared<nn::SyncBatchNorm1d>(2);
  auto tuned = std::make_shared<TunedSyncBatchNorm>(3);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{sync, tuned});
  CHECK_THROWS_MATCHES(nn::revert_sync_batchnorm(model), InvalidArgument,
                       MessageIs("revert_sync_batchnorm: SyncBatchNorm2d(3, eps=1e-05, momentum=0.1, affine=true, "
                                 "track_running_stats=true) is a subclass of SyncBatchNorm2d, expected SyncBatchNorm1d, "
                                 "SyncBatchNorm2d or SyncBatchNorm3d itself (reverting it would drop its overrides); "
                                 "nothing was reverted"));
  CHECK(model->children()[0].second == sync);  // checked before the first replacement
}
