// A consumer of syncbn: training steps of a model with synchronized batch
// norm on two logical CPU devices, a checkpoint saved and loaded back, and
// the data layer's reader (which links zlib), through the umbrella header
// and the syncbn::syncbn target. Built by the consumer tests against an
// installed syncbn (find_package) and with syncbn as a subproject.

#include <cstdio>
#include <filesystem>
#include <memory>

#include "syncbn/syncbn.hpp"

int main(int /*argc*/, char** argv) {
  using namespace syncbn;
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(4, 8, nn::LinearOptions{.seed = 1}));
  model->add(std::make_shared<nn::BatchNorm1d>(8));
  model->add(std::make_shared<nn::ReLU>());
  model->add(std::make_shared<nn::Linear>(8, 2, nn::LinearOptions{.seed = 2}));
  auto synced = nn::convert_sync_batchnorm(model);
  parallel::DataParallel dp(synced, {Device::cpu(0), Device::cpu(1)});
  optim::SGD sgd(synced->parameters(), optim::SGDOptions{.lr = 0.1});
  nn::CrossEntropyLoss loss_fn;
  const Tensor x = Tensor::randn(Shape{16, 4}, 7);
  const Tensor labels = Tensor::from_vector(std::vector<std::int64_t>(16, 1), Shape{16});
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    sgd.zero_grad();
    last = loss_fn.forward(dp.forward(x), labels).item();
    dp.backward(loss_fn.backward());
    sgd.step();
    if (step == 0) first = last;
  }
  // Beside the executable: a directory of this consumer build only.
  const auto checkpoint = (std::filesystem::path(argv[0]).parent_path() / "model.safetensors").string();
  nn::save(*synced, checkpoint);
  nn::load(*synced, checkpoint);
  bool data_ok = false;
  try {
    data::read_idx(checkpoint + ".absent");
  } catch (const InvalidArgument&) {
    data_ok = true;  // a missing file is an error naming it
  }
  std::printf("consumer: syncbn %s, CPU kernels %s, loss %.3f -> %.3f, checkpoint and data %s\n", SYNCBN_CONSUMER_WAY,
              std::string(cpu::capability_name(cpu::active_capability())).c_str(), first, last,
              data_ok ? "ok" : "failed");
  return last < first && data_ok ? 0 : 1;
}
