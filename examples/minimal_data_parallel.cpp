// The minimal DataParallel training program of docs/usage.md: an MLP learns a
// noisy linear rule on 4 logical CPU devices.
#include <cstdio>
#include <memory>
#include <vector>

#include "syncbn/syncbn.hpp"

int main() {
  using namespace syncbn;
  // 1. The model, on the first device.
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(8, 32, nn::LinearOptions{.seed = 1}));
  model->add(std::make_shared<nn::ReLU>());
  model->add(std::make_shared<nn::Linear>(32, 1, nn::LinearOptions{.seed = 2}));

  // 2. Wrap it: one replica per device, each in its own thread.
  const std::vector<Device> devices{Device::cpu(0), Device::cpu(1), Device::cpu(2), Device::cpu(3)};
  parallel::DataParallel dp(model, devices);

  // 3. An optimizer on the model's own parameters.
  optim::SGD sgd(model->parameters(), optim::SGDOptions{.lr = 0.05, .momentum = 0.9});
  nn::MSELoss loss_fn;

  // 4. Data: y = sum of the features, plus noise.
  const Tensor x = Tensor::randn(Shape{256, 8}, /*seed=*/42);
  std::vector<float> targets;
  for (int i = 0; i < 256; ++i) {
    float s = 0;
    for (float v : x.rows(i, i + 1).to_vector<float>()) s += v;
    targets.push_back(s);
  }
  const Tensor y = add(Tensor::from_vector(targets, Shape{256, 1}), Tensor::randn(Shape{256, 1}, 43, DType::Float32, Device(), 0.0, 0.1));

  // 5. Train: forward (scatter, parallel replicas, gather), loss on the
  //    gathered output, backward (gradients reduced into the model), step.
  double first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    sgd.zero_grad();
    const Tensor loss = loss_fn.forward(dp.forward(x), y);
    dp.backward(loss_fn.backward());
    sgd.step();
    last = loss.item();
    if (step == 0) first = last;
  }
  std::printf("loss %.4f -> %.4f\n", first, last);
  return last < first / 10 ? 0 : 1;
}
