// Checkpoints against PyTorch itself: a state_dict that PyTorch wrote loads
// into the same architecture and gives PyTorch's eval output, and PyTorch
// loads syncbn's checkpoint with strict names and gives syncbn's output.
// PyTorch's side is tests/python/torch_checkpoint.py, run with the python3
// that CMake found (SYNCBN_TEST_PYTHON3); without torch the cases skip.

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>

#include "support/convolutions.hpp"
#include "support/compare.hpp"
#include "support/device_under_test.hpp"
#include "support/seeds.hpp"
#include "support/skip.hpp"
#include "support/temp_dir.hpp"
#include "syncbn/core/safetensors.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/checkpoint.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/resnet.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/nn/sequential.hpp"

using namespace syncbn;
using syncbn::testing::TempDir;
using syncbn::testing::test_device;

namespace {

using Modules = std::vector<std::shared_ptr<nn::Module>>;

// make_model() of torch_checkpoint.py:
//   Sequential(Linear(4, 8), BatchNorm1d(8), ReLU(), Sequential(Linear(8, 3))).
std::shared_ptr<nn::Sequential> torch_test_model(std::uint64_t seed) {
  const Device dev = test_device();
  auto inner = std::make_shared<nn::Sequential>(
      Modules{std::make_shared<nn::Linear>(8, 3, nn::LinearOptions{.seed = seed + 1, .device = dev})});
  return std::make_shared<nn::Sequential>(
      Modules{std::make_shared<nn::Linear>(4, 8, nn::LinearOptions{.seed = seed, .device = dev}),
              std::make_shared<nn::BatchNorm1d>(8, nn::BatchNormOptions{.device = dev}), std::make_shared<nn::ReLU>(),
              inner});
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

struct Run {
  int status;          // the exit status, or -1 when the command did not exit normally
  std::string output;  // stdout and stderr
};

// Runs a shell command, its output captured in a file of `dir`.
Run run(const std::string& command, const TempDir& dir) {
  const std::string log = dir.file("command.log");
  const int raw = std::system((command + " >" + quoted(log) + " 2>&1").c_str());
  std::ifstream in(log);
  std::stringstream output;
  output << in.rdbuf();
  return {raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, output.str()};
}

// Why PyTorch cannot be used here, or "" when it can.
std::string torch_unavailable(const TempDir& dir) {
  const std::string python = SYNCBN_TEST_PYTHON3;
  if (python.empty()) return "CMake found no python3 (install python3-torch: scripts/install_deps.sh python3-torch)";
  const Run probe = run(quoted(python) + " -c 'import torch'", dir);
  if (probe.status != 0)
    return python + " cannot import torch (install Debian's python3-torch for /usr/bin/python3): " + probe.output;
  return "";
}

std::string script_command(const std::string& subcommand, const std::string& model, const std::string& reference,
                           const std::string& kind = "mlp") {
  return quoted(SYNCBN_TEST_PYTHON3) + " " + quoted(std::string(SYNCBN_TEST_PYTHON_DIR) + "/torch_checkpoint.py") +
         " " + subcommand + " " + quoted(model) + " " + quoted(reference) + " " + kind;
}

// make_resnet() of torch_checkpoint.py: two stages (4 and 8 channels) of one
// BasicBlock each, the second with a downsample shortcut.
std::shared_ptr<nn::Sequential> torch_test_resnet(std::uint64_t seed) {
  nn::ResNetOptions options;
  options.widths = {4, 8};
  options.blocks_per_stage = 1;
  options.seed = seed;
  options.device = test_device();
  return nn::resnet(options);
}

Tensor named(const core::SafetensorsFile& file, const std::string& name) {
  for (const auto& [n, t] : file.tensors)
    if (n == name) return t;
  FAIL("no tensor '" << name << "' in the reference file");
  return Tensor();
}

// A syncbn model (seeded, trained a little) saved to `model_path`, with its
// eval output on a fixed input saved to `reference_path`.
void write_syncbn_checkpoint(const std::string& model_path, const std::string& reference_path, double output_shift) {
  auto model = torch_test_model(syncbn::testing::kSeed);
  model->train();
  for (std::uint64_t step = 0; step < 2; ++step)
    model->forward(Tensor::randn(Shape{16, 4}, syncbn::testing::kSeed + 10 + step, DType::Float32, test_device(), -0.5, 1.5));
  model->eval();
  const Tensor x = Tensor::randn(Shape{6, 4}, syncbn::testing::kSeed + 20, DType::Float32, test_device());
  Tensor y = model->forward(x);
  if (output_shift != 0) {
    std::vector<float> shifted = y.to_vector<float>();
    shifted[0] += static_cast<float>(output_shift);
    y = Tensor::from_vector(shifted, y.shape(), test_device());
  }
  nn::save(*model, model_path);
  core::save_safetensors(reference_path, {{"input", x}, {"output", y}});
}

}  // namespace

TEST_CASE("A PyTorch state_dict loads into the same syncbn architecture and gives PyTorch's eval output",
          "[nn][checkpoint][torch]") {
  const TempDir dir;
  if (const std::string why = torch_unavailable(dir); !why.empty()) SYNCBN_SKIP(why);
  const std::string model_path = dir.file("torch_model.safetensors");
  const std::string reference_path = dir.file("torch_reference.safetensors");
  const Run written = run(script_command("write", model_path, reference_path), dir);
  INFO(written.output);
  REQUIRE(written.status == 0);

  auto model = torch_test_model(syncbn::testing::kSeed);
  // PyTorch's state_dict order is syncbn's.
  std::vector<std::string> file_names, own_names;
  for (const auto& [name, t] : core::load_safetensors(model_path).tensors) file_names.push_back(name);
  for (const auto& [name, t] : nn::state_dict(*model)) own_names.push_back(name);
  CHECK(file_names == own_names);

  nn::load(*model, model_path);
  const auto reference = core::load_safetensors(reference_path);
  CHECK(dynamic_cast<nn::BatchNorm&>((*model)[1]).num_batches_tracked().item() ==
        std::stod(reference.metadata.at("train_steps")));
  model->eval();
  const Tensor y = model->forward(named(reference, "input").to(test_device()));
  syncbn::testing::check_close(y, named(reference, "output").to_vector<double>(), {1e-5, 1e-5},
                               "syncbn's eval output against PyTorch's");
}

TEST_CASE("PyTorch loads a syncbn checkpoint with strict names and gives syncbn's eval output",
          "[nn][checkpoint][torch]") {
  const TempDir dir;
  if (const std::string why = torch_unavailable(dir); !why.empty()) SYNCBN_SKIP(why);
  const std::string model_path = dir.file("syncbn_model.safetensors");
  const std::string reference_path = dir.file("syncbn_reference.safetensors");
  write_syncbn_checkpoint(model_path, reference_path, 0.0);
  const Run checked = run(script_command("check", model_path, reference_path), dir);
  INFO(checked.output);
  CHECK(checked.status == 0);

  // The check can fail: an output off by 1e-3 in one element is caught.
  write_syncbn_checkpoint(model_path, reference_path, 1e-3);
  const Run off = run(script_command("check", model_path, reference_path), dir);
  INFO(off.output);
  CHECK(off.status == 1);
  CHECK(off.output.find("differs from syncbn's") != std::string::npos);
}

TEST_CASE("A PyTorch ResNet's state_dict loads into syncbn's resnet() and gives PyTorch's eval output",
          "[nn][checkpoint][torch]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const TempDir dir;
  if (const std::string why = torch_unavailable(dir); !why.empty()) SYNCBN_SKIP(why);
  const std::string model_path = dir.file("torch_resnet.safetensors");
  const std::string reference_path = dir.file("torch_resnet_reference.safetensors");
  const Run written = run(script_command("write", model_path, reference_path, "resnet"), dir);
  INFO(written.output);
  REQUIRE(written.status == 0);
  // Into the model as built and into its synchronized conversion alike.
  const bool synchronized = GENERATE(false, true);
  CAPTURE(synchronized);
  std::shared_ptr<nn::Module> model = torch_test_resnet(syncbn::testing::kSeed);
  if (synchronized) model = nn::convert_sync_batchnorm(model);
  std::vector<std::string> file_names, own_names;
  for (const auto& [name, t] : core::load_safetensors(model_path).tensors) file_names.push_back(name);
  for (const auto& [name, t] : nn::state_dict(*model)) own_names.push_back(name);
  CHECK(file_names == own_names);
  nn::load(*model, model_path);
  const auto reference = core::load_safetensors(reference_path);
  model->eval();
  const Tensor y = model->forward(named(reference, "input").to(test_device()));
  syncbn::testing::check_close(y, named(reference, "output").to_vector<double>(), {1e-5, 1e-5},
                               "syncbn's ResNet eval output against PyTorch's");
}

TEST_CASE("PyTorch loads a synchronized syncbn ResNet's checkpoint into its own ResNet and agrees",
          "[nn][checkpoint][torch]") {
  if (const std::string why = syncbn::testing::convolutions_unavailable(); !why.empty()) SYNCBN_SKIP(why);
  const TempDir dir;
  if (const std::string why = torch_unavailable(dir); !why.empty()) SYNCBN_SKIP(why);
  const std::string model_path = dir.file("syncbn_resnet.safetensors");
  const std::string reference_path = dir.file("syncbn_resnet_reference.safetensors");
  auto model = nn::convert_sync_batchnorm(torch_test_resnet(syncbn::testing::kSeed));
  model->train();
  for (std::uint64_t step = 0; step < 2; ++step)
    model->forward(Tensor::randn(Shape{8, 1, 8, 8}, syncbn::testing::kSeed + 30 + step, DType::Float32, test_device(),
                                 0.5, 2.0));
  model->eval();
  const Tensor x = Tensor::randn(Shape{3, 1, 8, 8}, syncbn::testing::kSeed + 40, DType::Float32, test_device());
  nn::save(*model, model_path);
  core::save_safetensors(reference_path, {{"input", x}, {"output", model->forward(x)}});
  const Run checked = run(script_command("check", model_path, reference_path, "resnet"), dir);
  INFO(checked.output);
  CHECK(checked.status == 0);
}
