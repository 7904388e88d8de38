// torch_resnet_fashion_mnist: a ResNet written in plain libtorch
// (torch::nn::Conv2d, BatchNorm2d, Linear) trained on Fashion-MNIST over K
// replica threads with syncbn's libtorch bridge: the model's norm layer is
// a template parameter, the plain model's state moves into the
// synchronized one (the same names), libtorch::DataParallel runs the
// steps, and the checkpoint is a torch::save file that the plain model
// loads. Flags: --replicas K (4), --epochs E (1), --batch B (128), --lr
// (0.1), --limit N (training images, all by default), --checkpoint PATH
// (torch_resnet_fashion_mnist.pt), --threads T (ATen threads per replica,
// cores / K by default), --help.

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "syncbn/data/fashion_mnist.hpp"
#include "syncbn/error.hpp"
#include "syncbn/libtorch/data_parallel.hpp"
#include "syncbn/libtorch/sync_batch_norm.hpp"

namespace lt = syncbn::libtorch;

namespace {

constexpr const char* kUsage =
    "torch_resnet_fashion_mnist [--replicas K] [--epochs E] [--batch B] [--lr LR] [--limit N]\n"
    "                           [--checkpoint PATH] [--threads T]\n"
    "A libtorch ResNet on Fashion-MNIST over K replica threads with synchronized batch norm\n"
    "(syncbn::libtorch::DataParallel). Defaults: 4 replicas, 1 epoch, batch 128, lr 0.1,\n"
    "every training image, checkpoint torch_resnet_fashion_mnist.pt, cores / K ATen threads\n"
    "per replica. The data: $SYNCBN_FASHION_MNIST_DIR or Debian's dataset-fashion-mnist.\n";

// A basic block: conv-norm-relu-conv-norm plus the input (projected by a
// strided 1x1 conv and a norm when the shape changes).
template <class Norm>
struct BlockImpl : torch::nn::Module {
  BlockImpl(std::int64_t in, std::int64_t out, std::int64_t stride)
      : conv1(register_module("conv1", torch::nn::Conv2d(
                                           torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)))),
        bn1(register_module("bn1", Norm(torch::nn::BatchNormOptions(out)))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, 3).padding(1).bias(false)))),
        bn2(register_module("bn2", Norm(torch::nn::BatchNormOptions(out)))) {
    if (stride != 1 || in != out) {
      down = register_module("down", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)));
      down_bn = register_module("down_bn", Norm(torch::nn::BatchNormOptions(out)));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor skip = down ? down_bn->forward(down->forward(x)) : x;
    return torch::relu(skip + bn2->forward(conv2->forward(torch::relu(bn1->forward(conv1->forward(x))))));
  }
  torch::nn::Conv2d conv1;
  Norm bn1;
  torch::nn::Conv2d conv2;
  Norm bn2;
  torch::nn::Conv2d down{nullptr};
  Norm down_bn{nullptr};
};

// Three stages of widths 16, 32 and 64, one block each, as syncbn's own
// ResNet demo (examples/resnet_fashion_mnist.cpp).
template <class Norm>
struct ResNetImpl : torch::nn::Module {
  ResNetImpl()
      : stem(register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1).bias(false)))),
        bn(register_module("bn", Norm(torch::nn::BatchNormOptions(16)))),
        stage1(register_module("stage1", std::make_shared<BlockImpl<Norm>>(16, 16, 1))),
        stage2(register_module("stage2", std::make_shared<BlockImpl<Norm>>(16, 32, 2))),
        stage3(register_module("stage3", std::make_shared<BlockImpl<Norm>>(32, 64, 2))),
        fc(register_module("fc", torch::nn::Linear(64, 10))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = torch::relu(bn->forward(stem->forward(x)));
    h = stage3->forward(stage2->forward(stage1->forward(h)));
    return fc->forward(h.mean({2, 3}));
  }
  torch::nn::Conv2d stem;
  Norm bn;
  std::shared_ptr<BlockImpl<Norm>> stage1, stage2, stage3;
  torch::nn::Linear fc;
};

using PlainResNet = ResNetImpl<torch::nn::BatchNorm2d>;
using SyncResNet = ResNetImpl<lt::SyncBatchNorm2d>;

const char* flag(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return fallback;
}

// A syncbn dataset split as torch tensors (copies).
std::pair<torch::Tensor, torch::Tensor> load(syncbn::data::Split split, std::int64_t limit) {
  const syncbn::data::Dataset d = syncbn::data::load_fashion_mnist(split, syncbn::data::default_fashion_mnist_dir(), limit);
  const std::int64_t n = d.images.size(0);
  torch::Tensor images = torch::empty({n, 1, 28, 28});
  torch::Tensor labels = torch::empty({n}, torch::kLong);
  const auto pixels = d.images.to_vector<float>();
  const auto classes = d.labels.to_vector<std::int64_t>();
  std::memcpy(images.data_ptr<float>(), pixels.data(), pixels.size() * sizeof(float));
  std::memcpy(labels.data_ptr<std::int64_t>(), classes.data(), classes.size() * sizeof(std::int64_t));
  return {images, labels};
}

double accuracy(SyncResNet& model, const torch::Tensor& images, const torch::Tensor& labels) {
  torch::NoGradGuard no_grad;
  model.eval();
  std::int64_t right = 0;
  for (std::int64_t at = 0; at < images.size(0); at += 1000) {
    const std::int64_t rows = std::min<std::int64_t>(1000, images.size(0) - at);
    right += model.forward(images.narrow(0, at, rows)).argmax(1).eq(labels.narrow(0, at, rows)).sum().item<std::int64_t>();
  }
  model.train();
  return 100.0 * static_cast<double>(right) / static_cast<double>(images.size(0));
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf("%s", kUsage);
      return 0;
    }
  try {
    const int replicas = std::stoi(flag(argc, argv, "--replicas", "4"));
    const int epochs = std::stoi(flag(argc, argv, "--epochs", "1"));
    const std::int64_t batch = std::stol(flag(argc, argv, "--batch", "128"));
    const double lr = std::stod(flag(argc, argv, "--lr", "0.1"));
    const std::int64_t limit = std::stol(flag(argc, argv, "--limit", "-1"));
    const int threads = std::stoi(flag(argc, argv, "--threads", "0"));
    const std::string checkpoint = flag(argc, argv, "--checkpoint", "torch_resnet_fashion_mnist.pt");
    SYNCBN_CHECK(epochs >= 1 && batch >= 1, "torch_resnet_fashion_mnist: --epochs ", epochs, " --batch ", batch,
                 ", expected both >= 1");

    const auto [train_x, train_y] = load(syncbn::data::Split::Train, limit);
    const auto [test_x, test_y] = load(syncbn::data::Split::Test, -1);
    torch::manual_seed(1);
    // The model as libtorch users write it, then its state in the
    // synchronized model: the same parameter and buffer names.
    auto plain = std::make_shared<PlainResNet>();
    auto model = std::make_shared<SyncResNet>();
    {
      torch::NoGradGuard no_grad;
      const auto params = plain->named_parameters();
      for (auto& item : model->named_parameters()) item.value().copy_(params[item.key()]);
    }
    // Its modules are plain torch::nn::Modules (not Cloneable): the
    // replicas are built alike and take the model's values.
    lt::DataParallel dp(model, {.replicas = replicas,
                                .intra_op_threads = threads,
                                .make_replica = [] { return std::make_shared<SyncResNet>(); }});
    torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(lr).momentum(0.9).weight_decay(5e-4));
    const lt::ReplicaLoss loss = [](torch::nn::Module& m, const torch::Tensor& x, const torch::Tensor& y) {
      return torch::nn::functional::cross_entropy(static_cast<SyncResNet&>(m).forward(x), y);
    };
    const std::int64_t n = train_x.size(0);
    const std::int64_t steps = (n + batch - 1) / batch;
    std::printf("torch_resnet_fashion_mnist: %ld training images, %d replicas x %d ATen threads, batch %ld, "
                "%ld steps per epoch\n",
                static_cast<long>(n), replicas, dp.intra_op_threads(), static_cast<long>(batch), static_cast<long>(steps));
    const auto start = std::chrono::steady_clock::now();
    for (int epoch = 1; epoch <= epochs; ++epoch) {
      const torch::Tensor order = torch::randperm(n, torch::kLong);
      double loss_sum = 0;
      std::int64_t seen = 0;
      const auto epoch_start = std::chrono::steady_clock::now();
      for (std::int64_t s = 0; s < steps; ++s) {
        const std::int64_t rows = std::min(batch, n - s * batch);
        const torch::Tensor idx = order.narrow(0, s * batch, rows);
        sgd.zero_grad();
        loss_sum += dp.step(train_x.index_select(0, idx), train_y.index_select(0, idx), loss) * static_cast<double>(rows);
        sgd.step();
        seen += rows;
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
        const double rate = static_cast<double>(seen) / std::max(secs, 1e-9);
        std::printf("\repoch %d/%d  step %ld/%ld  loss %.4f  %.0f samples/s  ETA %.0f s   ", epoch, epochs,
                    static_cast<long>(s + 1), static_cast<long>(steps), loss_sum / static_cast<double>(seen), rate,
                    static_cast<double>(n - seen) / rate);
        std::fflush(stdout);
      }
      std::printf("\nepoch %d: mean loss %.4f, test accuracy %.2f%%\n", epoch, loss_sum / static_cast<double>(seen),
                  accuracy(*model, test_x, test_y));
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    torch::save(model, checkpoint);
    // The checkpoint loads into the plain model, which then predicts alike.
    torch::load(plain, checkpoint);
    plain->eval();
    model->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor probe = test_x.narrow(0, 0, 256);
    SYNCBN_CHECK(torch::allclose(plain->forward(probe), model->forward(probe), 1e-5, 1e-5),
                 "torch_resnet_fashion_mnist: the plain model loaded from ", checkpoint,
                 " predicts otherwise, expected the synchronized model's outputs");
    std::printf("trained in %.1f s; checkpoint %s (torch::save, loads into torch::nn::BatchNorm2d models)\n", secs,
                checkpoint.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torch_resnet_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
