// Checkpoints: state_dict names and order (PyTorch's), save/load round trips,
// SyncBatchNorm <-> BatchNorm checkpoints, and loads that fail without
// changing the module. Device-generic: also runs on cuda:0 in the CUDA test
// binary.

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/module_state.hpp"
#include "support/seeds.hpp"
#include "support/temp_dir.hpp"
#include "syncbn/core/safetensors.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/checkpoint.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"

using namespace syncbn;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using syncbn::testing::module_state;
using syncbn::testing::read_file;
using syncbn::testing::TempDir;
using syncbn::testing::test_device;
using syncbn::testing::write_file;

namespace {

using State = std::vector<std::pair<std::string, Tensor>>;
using Modules = std::vector<std::shared_ptr<nn::Module>>;

// Sequential(Linear(4, 8), BatchNorm1d(8), ReLU(), Sequential(Linear(8, 3))),
// its Linear layers initialised from `seed`.
std::shared_ptr<nn::Sequential> make_model(std::uint64_t seed, std::int64_t in_features = 4) {
  const Device dev = test_device();
  auto inner = std::make_shared<nn::Sequential>(
      Modules{std::make_shared<nn::Linear>(8, 3, nn::LinearOptions{.seed = seed + 1, .device = dev})});
  return std::make_shared<nn::Sequential>(
      Modules{std::make_shared<nn::Linear>(in_features, 8, nn::LinearOptions{.seed = seed, .device = dev}),
              std::make_shared<nn::BatchNorm1d>(8, nn::BatchNormOptions{.device = dev}), std::make_shared<nn::ReLU>(),
              inner});
}

// A few train-mode forwards, so that the running statistics and
// num_batches_tracked differ from their initial values.
void train_a_little(nn::Module& model, std::uint64_t seed, int steps = 3) {
  model.train();
  for (int step = 0; step < steps; ++step)
    model.forward(Tensor::randn(Shape{16, 4}, seed + static_cast<std::uint64_t>(step), DType::Float32, test_device(),
                                0.5, 2.0));
}

std::vector<std::string> names_of(const State& state) {
  std::vector<std::string> out;
  for (const auto& [name, t] : state) out.push_back(name);
  return out;
}

std::vector<std::uint8_t> bytes_of(const Tensor& t) {
  const Tensor host = t.to(Device::cpu());
  const auto* p = static_cast<const std::uint8_t*>(host.raw_data());
  return p == nullptr ? std::vector<std::uint8_t>{} : std::vector<std::uint8_t>(p, p + host.nbytes());
}

// Every tensor of both states bit-identical, names and order equal.
void check_same_state(const State& got, const State& want) {
  REQUIRE(names_of(got) == names_of(want));
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("'" << got[i].first << "'");
    CHECK(got[i].second.dtype() == want[i].second.dtype());
    CHECK(got[i].second.shape() == want[i].second.shape());
    CHECK(bytes_of(got[i].second) == bytes_of(want[i].second));
  }
}

State cloned(const State& state) {
  State out;
  for (const auto& [name, t] : state) out.emplace_back(name, t.clone());
  return out;
}

// A module with parameters, buffers and a child of its own: PyTorch lists
// its own parameters, then its own buffers, then the child's.
class Block : public nn::Cloneable<Block> {
 public:
  Block() {
    register_parameter("scale", Tensor::ones(Shape{2}, DType::Float32, test_device()));
    register_buffer("steps", Tensor::zeros(Shape{}, DType::Int64, test_device()));
    register_module("inner", std::make_shared<nn::Linear>(2, 2, nn::LinearOptions{.device = test_device()}));
    register_parameter("shift", Tensor::zeros(Shape{2}, DType::Float32, test_device()));
  }
  std::string describe() const override { return "Block()"; }
  Tensor forward(const Tensor& input) override { return input; }
  Tensor backward(const Tensor& grad_output) override { return grad_output; }
};

}  // namespace

TEST_CASE("state_dict names and orders tensors as PyTorch's state_dict does", "[nn][checkpoint]") {
  auto model = make_model(1);
  const State state = nn::state_dict(*model);
  // Per module in pre-order: its parameters, then its buffers.
  CHECK(names_of(state) == std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                                    "1.running_var", "1.num_batches_tracked", "3.0.weight",
                                                    "3.0.bias"});
  auto& bn = dynamic_cast<nn::BatchNorm1d&>((*model)[1]);
  CHECK(state[0].second.shape() == Shape{8, 4});
  CHECK(state[6].second.dtype() == DType::Int64);
  CHECK(state[6].second.shape() == Shape{});
  CHECK(state[4].second.dtype() == DType::Float32);
  // The module's own tensors, as PyTorch's state_dict gives them.
  CHECK(state[2].second.shares_storage_with(bn.weight().value));
  CHECK(state[6].second.shares_storage_with(bn.num_batches_tracked()));

  Block block;
  CHECK(names_of(nn::state_dict(block)) ==
        std::vector<std::string>{"scale", "shift", "steps", "inner.weight", "inner.bias"});

  // Without running statistics or affine parameters, those names are absent.
  nn::BatchNorm2d bare(3, nn::BatchNormOptions{.affine = false, .track_running_stats = false, .device = test_device()});
  CHECK(nn::state_dict(bare).empty());
}

TEST_CASE("save and load make a differently seeded model equal in every tensor and output", "[nn][checkpoint]") {
  CAPTURE(syncbn::testing::kSeed);
  const TempDir dir;
  const std::string path = dir.file("model.safetensors");
  auto source = make_model(1);
  train_a_little(*source, syncbn::testing::kSeed);
  nn::save(*source, path);
  CHECK(core::load_safetensors(path).metadata == std::map<std::string, std::string>{{"format", "pt"}});

  auto target = make_model(2);
  train_a_little(*target, syncbn::testing::kSeed + 100, 1);
  nn::load(*target, path);
  check_same_state(nn::state_dict(*target), nn::state_dict(*source));
  CHECK(dynamic_cast<nn::BatchNorm&>((*target)[1]).num_batches_tracked().item() == 3);

  const Tensor x = Tensor::randn(Shape{5, 4}, syncbn::testing::kSeed + 7, DType::Float32, test_device());
  source->eval();
  target->eval();
  CHECK(bytes_of(target->forward(x)) == bytes_of(source->forward(x)));
}

TEST_CASE("load_state_dict copies in place: Parameter objects and their tensors keep their identity",
          "[nn][checkpoint]") {
  auto source = make_model(1);
  train_a_little(*source, syncbn::testing::kSeed);
  auto target = make_model(2);
  const std::vector<nn::Parameter*> params = target->parameters();
  std::vector<Tensor> values;
  for (auto* p : params) values.push_back(p->value);
  const Tensor running_mean = dynamic_cast<nn::BatchNorm&>((*target)[1]).running_mean();

  nn::load_state_dict(*target, cloned(nn::state_dict(*source)));
  CHECK(target->parameters() == params);
  const auto source_params = source->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    INFO("parameter " << i);
    CHECK(params[i]->value.shares_storage_with(values[i]));
    CHECK(bytes_of(values[i]) == bytes_of(source_params[i]->value));
  }
  CHECK(bytes_of(running_mean) == bytes_of(dynamic_cast<nn::BatchNorm&>((*source)[1]).running_mean()));
  // Loading a module's own state_dict into it changes nothing.
  const auto before = module_state(*target);
  nn::load_state_dict(*target, nn::state_dict(*target));
  CHECK(module_state(*target) == before);
}

TEST_CASE("A SyncBatchNorm model's checkpoint loads into the BatchNorm model and back", "[nn][checkpoint]") {
  const TempDir dir;
  auto plain = make_model(1);
  auto synced_source = make_model(2);
  train_a_little(*synced_source, syncbn::testing::kSeed);
  auto synced = nn::convert_sync_batchnorm(synced_source);
  REQUIRE(dynamic_cast<nn::SyncBatchNorm1d*>(&(*synced_source)[1]) != nullptr);
  CHECK(names_of(nn::state_dict(*synced)) == names_of(nn::state_dict(*plain)));

  const std::string from_sync = dir.file("sync.safetensors");
  nn::save(*synced, from_sync);
  nn::load(*plain, from_sync);
  check_same_state(nn::state_dict(*plain), nn::state_dict(*synced));

  auto other = make_model(3);
  train_a_little(*other, syncbn::testing::kSeed + 50, 2);
  const std::string from_plain = dir.file("plain.safetensors");
  nn::save(*other, from_plain);
  nn::load(*synced, from_plain);
  check_same_state(nn::state_dict(*synced), nn::state_dict(*other));
  CHECK(dynamic_cast<nn::SyncBatchNorm1d&>((*synced_source)[1]).num_batches_tracked().item() == 2);
}

TEST_CASE("A checkpoint with the wrong names, shapes or dtypes is refused and the module stays bit-identical",
          "[nn][checkpoint]") {
  auto model = make_model(1);
  train_a_little(*model, syncbn::testing::kSeed);
  const auto before = module_state(*model);
  const State good = cloned(nn::state_dict(*make_model(2)));

  SECTION("a name missing") {
    State state(good.begin(), good.end() - 1);
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: the state does not match the module's names: it lacks 1 name "
                                   "of the module ('3.0.bias'), expected exactly the module's 9 names (strict)"));
  }
  SECTION("an unexpected name") {
    State state = good;
    state.emplace_back("4.weight", Tensor::zeros(Shape{2}, DType::Float32, test_device()));
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: the state does not match the module's names: it has 1 name "
                                   "the module does not ('4.weight'), expected exactly the module's 9 names (strict)"));
  }
  SECTION("names missing and unexpected") {
    State state(good.begin() + 2, good.end());
    state.emplace_back("x", Tensor::zeros(Shape{2}, DType::Float32, test_device()));
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: the state does not match the module's names: it lacks 2 names "
                                   "of the module ('0.weight', '0.bias') and has 1 name the module does not ('x'), "
                                   "expected exactly the module's 9 names (strict)"));
  }
  SECTION("a shape that differs (the last tensor, after others that match)") {
    State state = good;
    state.back().second = Tensor::zeros(Shape{4}, DType::Float32, test_device());
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: '3.0.bias' has shape (4), expected (3) (the module's)"));
  }
  SECTION("a float dtype that differs") {
    State state = good;
    state[5].second = state[5].second.to(DType::Float64);
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: '1.running_var' has dtype float64, expected float32 (the module's)"));
  }
  SECTION("num_batches_tracked as a float") {
    State state = good;
    state[6].second = state[6].second.to(DType::Float32);
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: '1.num_batches_tracked' has dtype float32, expected int64 (the "
                                   "module's)"));
  }
  SECTION("a name given twice") {
    State state = good;
    state.push_back(good[0]);
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: '0.weight' is given twice, expected distinct names"));
  }
  SECTION("an undefined tensor") {
    State state = good;
    state[3].second = Tensor();
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state), InvalidArgument,
                         MessageIs("nn::load_state_dict: '1.bias' is undefined, expected a tensor"));
  }
  SECTION("a wrong shape is refused without strict too") {
    State state(good.begin(), good.end() - 1);
    state[0].second = Tensor::zeros(Shape{8, 5}, DType::Float32, test_device());
    CHECK_THROWS_MATCHES(nn::load_state_dict(*model, state, /*strict=*/false), InvalidArgument,
                         MessageIs("nn::load_state_dict: '0.weight' has shape (8, 5), expected (8, 4) (the module's)"));
  }
  CHECK(module_state(*model) == before);
}

TEST_CASE("load_state_dict without strict loads the names both sides have and skips the others", "[nn][checkpoint]") {
  auto model = make_model(1);
  auto source = make_model(2);
  train_a_little(*source, syncbn::testing::kSeed);
  State state = cloned(nn::state_dict(*source));
  const Tensor kept = nn::state_dict(*model).back().second.clone();  // 3.0.bias
  state.pop_back();
  state.emplace_back("extra", Tensor::zeros(Shape{1}, DType::Float32, test_device()));
  nn::load_state_dict(*model, state, /*strict=*/false);
  const State loaded = nn::state_dict(*model);
  for (std::size_t i = 0; i + 1 < loaded.size(); ++i) {
    INFO("'" << loaded[i].first << "'");
    CHECK(bytes_of(loaded[i].second) == bytes_of(state[i].second));
  }
  CHECK(bytes_of(loaded.back().second) == bytes_of(kept));
}

TEST_CASE("nn::load names the path and leaves the module bit-identical for a bad file", "[nn][checkpoint]") {
  const TempDir dir;
  auto model = make_model(1);
  train_a_little(*model, syncbn::testing::kSeed);
  const auto before = module_state(*model);
  const std::string path = dir.file("model.safetensors");

  SECTION("a missing file") {
    CHECK_THROWS_MATCHES(nn::load(*model, path), InvalidArgument,
                         MessageIs("nn::load: cannot open '" + path +
                                   "': No such file or directory, expected a readable safetensors file"));
  }
  SECTION("a truncated file") {
    nn::save(*make_model(2), path);
    auto bytes = read_file(path);
    bytes.resize(bytes.size() - 10);
    write_file(path, bytes);
    CHECK_THROWS_MATCHES(nn::load(*model, path), InvalidArgument,
                         MessageContains("nn::load: '" + path + "': tensor '3.0.bias' has data_offsets"));
    CHECK_THROWS_MATCHES(nn::load(*model, path), InvalidArgument, MessageContains("is the file truncated?"));
  }
  SECTION("a file of another architecture") {
    nn::save(*make_model(2, /*in_features=*/5), path);
    CHECK_THROWS_MATCHES(nn::load(*model, path), InvalidArgument,
                         MessageIs("nn::load: '" + path + "': '0.weight' has shape (8, 5), expected (8, 4) (the module's)"));
  }
  SECTION("a file that lacks a name") {
    State state = nn::state_dict(*make_model(2));
    state.erase(state.begin() + 6);
    core::save_safetensors(path, state);
    CHECK_THROWS_MATCHES(nn::load(*model, path), InvalidArgument,
                         MessageIs("nn::load: '" + path + "': the state does not match the module's names: it lacks 1 "
                                   "name of the module ('1.num_batches_tracked'), expected exactly the module's 9 names "
                                   "(strict)"));
  }
  SECTION("a file with a name the module lacks") {
    State state = nn::state_dict(*make_model(2));
    state.emplace_back("4.weight", Tensor::zeros(Shape{3, 3}, DType::Float32, test_device()));
    core::save_safetensors(path, state);
    CHECK_THROWS_MATCHES(nn::load(*model, path), InvalidArgument,
                         MessageIs("nn::load: '" + path + "': the state does not match the module's names: it has 1 "
                                   "name the module does not ('4.weight'), expected exactly the module's 9 names "
                                   "(strict)"));
  }
  SECTION("a float64 file for a float32 model") {
    State state = nn::state_dict(*make_model(2));
    for (auto& [name, t] : state)
      if (t.dtype() == DType::Float32) t = t.to(DType::Float64);
    core::save_safetensors(path, state);
    CHECK_THROWS_MATCHES(nn::load(*model, path), InvalidArgument,
                         MessageIs("nn::load: '" + path + "': '0.weight' has dtype float64, expected float32 (the module's)"));
  }
  CHECK(module_state(*model) == before);
}

TEST_CASE("nn::save names the path when the file cannot be written", "[nn][checkpoint]") {
  const TempDir dir;
  const std::string path = dir.file("absent/model.safetensors");
  CHECK_THROWS_MATCHES(nn::save(*make_model(1), path), Error,
                       MessageIs("nn::save: cannot create '" + path + ".tmp' (written, then renamed to '" + path +
                                 "'): No such file or directory"));
}
