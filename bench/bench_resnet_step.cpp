// bench_resnet_step: one training step of the small ResNet under DataParallel
// with SyncBatchNorm2d, and where its time goes.
//
//   bench_resnet_step [--devices-list cpu:0|cpu:0,cpu:1|cpu:0,cpu:1,cpu:2,cpu:3]
//                     [--blocks 2,1] [--batch 64] [--steps 5] [--warmup 2] [--reps 3]
//                     [--modes sync,sync+timers,local+timers,eval,eval+frozen] [--write-check FILE]
//                     [--layout nchw|nhwc]
//
// Model: nn::resnet with widths {16, 32, 64}, --blocks basic blocks per
// stage, 1 input channel, 10 classes; input (batch, 1, 28, 28) from randn
// and random labels, both fixed (seed 7). --layout nhwc builds the network
// channels-last (ResNetOptions::layout) and feeds it the same input
// permuted to (batch, 28, 28, 1); losses are the same as NCHW's. A step is zero_grad, forward
// through DataParallel, cross-entropy on the gathered logits, backward (with
// the gradient reduction) and SGD with momentum 0.9 (lr 0.05).
//
// Modes, sampled round-robin (one sample of each configuration in turn, so
// that all of them see the same machine conditions):
//   sync          convert_sync_batchnorm, nothing else: the headline step time.
//   sync+timers   the same model with a timing wrapper (Note [Step split])
//                 around every Conv2d and batch norm and around the replica's
//                 whole model; its step time beside `sync` shows the cost of
//                 the timers.
//   local+timers  the same, with per-replica BatchNorm2d (no exchange).
//   eval          inference instead of a step: the model in eval mode, the
//                 forward through DataParallel and the loss only.
//   eval+frozen   the same under cpu::FrozenConvWeights, one guard per
//                 sample: oneDNN reorders each weight at the sample's first
//                 step only (Note [Frozen weights] in
//                 src/core/cpu/conv_onednn.cpp).
//
// Output: per (blocks, K, mode) the median step time over --reps samples of
// --steps steps (min and max beside it), samples/s, and the check column:
// the first step's loss of every SyncBatchNorm run (and of K = 1) must match
// that of the same model on one device within 1e-4 relative (#wrong; the
// eval modes against eval on one device). Then
// the split table per (blocks, K).
//
// --write-check FILE writes the first --blocks model's initial state_dict,
// the input ("input"), the labels ("labels") and the single-device losses of
// the first three steps (metadata "losses") as a safetensors file, so that
// bench/torch_resnet_step.py --check FILE can verify that its model is the
// same network.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/syncbn.hpp"

// OpenBLAS's thread count, where the BLAS is OpenBLAS (null otherwise).
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
extern "C" char* openblas_get_corename(void) __attribute__((weak));

namespace {

using namespace syncbn;
using clock_type = std::chrono::steady_clock;

// Note [Step split]
// Where a step's time goes is measured by wrapping modules, in the benchmark
// only: Timed forwards to its one child and adds the wall time of each
// forward and backward to a Category, in a slot of the replica that ran it
// (one cache line per slot, written by that replica's thread only, so the
// timers never synchronise the threads). Every Conv2d is wrapped in the
// "conv" category, every batch norm in "bn", and each replica's whole model
// in "replica". Per step and averaged over the replicas:
//   conv          time inside Conv2d forward and backward (im2col, GEMMs, col2im)
//   bn            time inside the batch norms; for SyncBatchNorm this
//                 includes the two exchanges per layer (waiting at the
//                 rendezvous for the slowest replica, the master's merge and
//                 the replies)
//   other layers  replica - conv - bn: ReLU, residual adds, pooling, fc
//   runtime       DataParallel forward + backward on the calling thread minus
//                 the replica time: scatter, hand-overs to the worker threads,
//                 gather, reduction of the gradients
//   loss + optim  cross-entropy forward and backward, zero_grad, SGD step
// The exchange is the difference of the bn time between the sync+timers and
// local+timers runs of the same K (sampled alternately): both run the same
// batch-norm kernels on the same shards, the synchronized layer adds the
// rendezvous. Two clock reads per wrapped call (about 60 calls per step for
// two blocks per stage) cost a few microseconds per step; the `sync` mode
// beside `sync+timers` shows that they do not change the step.
constexpr int kSlots = 9;  // the user's model (replica id -1) and up to 8 replicas

struct alignas(64) Slot {
  double seconds = 0;
};

struct Category {
  std::array<Slot, kSlots> slots{};
  void reset() {
    for (auto& s : slots) s.seconds = 0;
  }
  double total() const {
    double t = 0;
    for (const auto& s : slots) t += s.seconds;
    return t;
  }
};

class Timed : public nn::Cloneable<Timed> {
 public:
  Timed(std::shared_ptr<nn::Module> inner, std::shared_ptr<Category> category) : category_(std::move(category)) {
    register_module("inner", std::move(inner));
  }
  std::string describe() const override { return "Timed(" + children().front().second->describe() + ")"; }
  Tensor forward(const Tensor& input) override {
    const auto start = clock_type::now();
    Tensor out = child(0).forward(input);
    add(start);
    return out;
  }
  Tensor backward(const Tensor& grad_output) override {
    const auto start = clock_type::now();
    Tensor out = child(0).backward(grad_output);
    add(start);
    return out;
  }

 private:
  void add(clock_type::time_point start) {
    category_->slots[static_cast<std::size_t>(replica_id() + 1)].seconds +=
        std::chrono::duration<double>(clock_type::now() - start).count();
  }
  std::shared_ptr<Category> category_;
};

struct Timers {
  std::shared_ptr<Category> conv = std::make_shared<Category>();
  std::shared_ptr<Category> bn = std::make_shared<Category>();
  std::shared_ptr<Category> replica = std::make_shared<Category>();
  void reset() {
    conv->reset();
    bn->reset();
    replica->reset();
  }
};

// Wraps every Conv2d and batch norm below `module` (Note [Step split]).
void wrap_layers(nn::Module& module, const Timers& timers) {
  const auto children = module.children();  // a copy: replace_child edits the list
  for (const auto& [name, child] : children) {
    if (dynamic_cast<nn::Conv2d*>(child.get()) != nullptr) module.replace_child(name, std::make_shared<Timed>(child, timers.conv));
    else if (dynamic_cast<nn::BatchNorm*>(child.get()) != nullptr)
      module.replace_child(name, std::make_shared<Timed>(child, timers.bn));
    else wrap_layers(*child, timers);
  }
}

struct Batch {
  Tensor x, labels;
  Tensor input;  // x in the network's layout
};

core::ChannelLayout g_layout = core::ChannelLayout::First;

Batch make_batch(std::int64_t batch) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<std::int64_t> pick(0, 9);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(batch));
  for (auto& l : labels) l = pick(rng);
  const Tensor x = Tensor::randn(Shape{batch, 1, 28, 28}, 7);
  return {x, Tensor::from_vector(labels, Shape{batch}),
          g_layout == core::ChannelLayout::Last ? core::to_channels_last(x) : x};
}

std::shared_ptr<nn::Module> make_model(std::int64_t blocks) {
  nn::ResNetOptions options;
  options.in_channels = 1;
  options.num_classes = 10;
  options.widths = {16, 32, 64};
  options.blocks_per_stage = blocks;
  options.seed = 11;
  options.layout = g_layout;
  return nn::resnet(options);
}

constexpr double kLr = 0.05, kMomentum = 0.9;

// The split of one sample, in seconds per step.
struct Split {
  double step = 0, conv = 0, bn = 0, replica = 0, runtime = 0, loss_optim = 0;
};

// One configuration: a model, its DataParallel, optimizer and timers.
class Config {
 public:
  Config(std::int64_t blocks, std::vector<Device> devices, std::string mode, const Batch& batch)
      : blocks_(blocks), devices_(std::move(devices)), mode_(std::move(mode)), batch_(batch) {
    std::shared_ptr<nn::Module> model = make_model(blocks);
    if (mode_ != "local+timers") model = nn::convert_sync_batchnorm(model);
    timed_ = mode_.ends_with("+timers");
    if (timed_) {
      wrap_layers(*model, timers_);
      model = std::make_shared<Timed>(model, timers_.replica);
    }
    if (evaluates()) model->eval();  // the outermost module too: DataParallel passes its mode on
    model_ = model;
    dp_ = std::make_unique<parallel::DataParallel>(model_, devices_);
    sgd_ = std::make_unique<optim::SGD>(model_->parameters(), optim::SGDOptions{.lr = kLr, .momentum = kMomentum});
  }

  const std::string& mode() const { return mode_; }
  std::size_t k() const { return devices_.size(); }
  std::int64_t blocks() const { return blocks_; }
  bool evaluates() const { return mode_.starts_with("eval"); }

  // One step; adds its phases to `split` and returns the loss.
  double step(Split& split) {
    if (evaluates()) {
      const auto t0 = clock_type::now();
      const double loss = loss_.forward(dp_->forward(batch_.input), batch_.labels).item();
      split.step += std::chrono::duration<double>(clock_type::now() - t0).count();
      return loss;
    }
    const auto t0 = clock_type::now();
    sgd_->zero_grad();
    const auto t1 = clock_type::now();
    const Tensor logits = dp_->forward(batch_.input);
    const auto t2 = clock_type::now();
    const double loss = loss_.forward(logits, batch_.labels).item();
    const Tensor grad = loss_.backward();
    const auto t3 = clock_type::now();
    dp_->backward(grad);
    const auto t4 = clock_type::now();
    sgd_->step();
    const auto t5 = clock_type::now();
    const auto s = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    split.step += s(t0, t5);
    split.runtime += s(t1, t2) + s(t3, t4);
    split.loss_optim += s(t0, t1) + s(t2, t3) + s(t4, t5);
    return loss;
  }

  // One sample of `steps` steps: the per-step split.
  Split sample(int steps) {
    timers_.reset();
    Split split;
    {
      std::optional<cpu::FrozenConvWeights> frozen;
      if (mode_ == "eval+frozen") frozen.emplace();
      for (int i = 0; i < steps; ++i) step(split);
    }
    const double per = 1.0 / steps, replicas = static_cast<double>(k());
    split.step *= per;
    split.loss_optim *= per;
    if (timed_) {
      split.conv = timers_.conv->total() * per / replicas;
      split.bn = timers_.bn->total() * per / replicas;
      split.replica = timers_.replica->total() * per / replicas;
      split.runtime = split.runtime * per - split.replica;
    } else {
      split.runtime *= per;
    }
    return split;
  }

  double first_loss = 0;
  std::vector<Split> samples;

 private:
  std::int64_t blocks_;
  std::vector<Device> devices_;
  std::string mode_;
  const Batch& batch_;
  bool timed_ = false;
  Timers timers_;
  std::shared_ptr<nn::Module> model_;
  std::unique_ptr<parallel::DataParallel> dp_;
  std::unique_ptr<optim::SGD> sgd_;
  nn::CrossEntropyLoss loss_;
};

// The median of one field over the samples.
template <class F>
bench::Summary field(const std::vector<Split>& samples, F get) {
  std::vector<double> v;
  for (const auto& s : samples) v.push_back(get(s));
  return bench::summarize(v);
}

void write_check(const std::string& path, std::int64_t blocks, const Batch& batch) {
  std::shared_ptr<nn::Module> model = make_model(blocks);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, t] : nn::state_dict(*model)) tensors.emplace_back(name, t.clone());
  tensors.emplace_back("input", batch.x);
  tensors.emplace_back("labels", batch.labels);
  parallel::DataParallel dp(model, {Device::parse("cpu:0")});
  optim::SGD sgd(model->parameters(), optim::SGDOptions{.lr = kLr, .momentum = kMomentum});
  nn::CrossEntropyLoss loss_fn;
  std::string losses;
  for (int i = 0; i < 3; ++i) {
    sgd.zero_grad();
    const double loss = loss_fn.forward(dp.forward(batch.input), batch.labels).item();
    dp.backward(loss_fn.backward());
    sgd.step();
    char text[32];
    std::snprintf(text, sizeof text, "%.9g", loss);
    if (i > 0) losses += ',';
    losses += text;
  }
  core::save_safetensors(path, tensors,
                         {{"blocks", std::to_string(blocks)}, {"losses", losses}, {"lr", "0.05"}, {"momentum", "0.9"}});
  std::printf("# check file %s: blocks %ld, single-device losses of steps 1-3: %s\n", path.c_str(),
              static_cast<long>(blocks), losses.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  using bench::flag;
  const std::int64_t batch_size = std::stol(flag(argc, argv, "--batch", "64"));
  const int steps = std::stoi(flag(argc, argv, "--steps", "5"));
  const int warmup = std::stoi(flag(argc, argv, "--warmup", "2"));
  const int reps = std::stoi(flag(argc, argv, "--reps", "3"));
  const std::vector<long> blocks_list = bench::int_list(flag(argc, argv, "--blocks", "2,1"), "--blocks");
  const std::vector<std::string> modes = bench::str_list(flag(argc, argv, "--modes", "sync,sync+timers,local+timers"));
  const std::string check_path = flag(argc, argv, "--write-check", "");
  const std::string layout = flag(argc, argv, "--layout", "nchw");
  if (layout != "nchw" && layout != "nhwc") {
    std::fprintf(stderr, "--layout: '%s', expected nchw or nhwc\n", layout.c_str());
    return 2;
  }
  g_layout = layout == "nhwc" ? core::ChannelLayout::Last : core::ChannelLayout::First;
  std::vector<std::vector<Device>> lists;
  {
    std::string text = flag(argc, argv, "--devices-list", "cpu:0|cpu:0,cpu:1|cpu:0,cpu:1,cpu:2,cpu:3");
    std::size_t begin = 0;
    while (begin <= text.size()) {
      const std::size_t end = std::min(text.find('|', begin), text.size());
      std::vector<Device> list;
      for (const auto& d : bench::str_list(text.substr(begin, end - begin))) list.push_back(Device::parse(d));
      lists.push_back(list);
      begin = end + 1;
    }
  }
  for (const auto& m : modes)
    if (m != "sync" && m != "sync+timers" && m != "local+timers" && m != "eval" && m != "eval+frozen") {
      std::fprintf(stderr, "--modes: unknown mode '%s', expected sync, sync+timers, local+timers, eval or eval+frozen\n",
                   m.c_str());
      return 2;
    }

  const Batch batch = make_batch(batch_size);
  std::printf("# bench_resnet_step: ResNet widths 16,32,64, input (%ld,1,28,28) %s, SGD momentum; median of %d "
              "samples of %d steps (warm-up %d), configurations sampled round-robin\n",
              static_cast<long>(batch_size), layout == "nhwc" ? "channels-last" : "NCHW", reps, steps, warmup);
  std::printf("%s; OpenBLAS threads: %s, kernels: %s\n", bench::cpu_level_line().c_str(),
              openblas_get_num_threads != nullptr ? std::to_string(openblas_get_num_threads()).c_str() : "n/a",
              openblas_get_corename != nullptr ? openblas_get_corename() : "n/a");
  if (!check_path.empty()) write_check(check_path, blocks_list.front(), batch);

  for (const long blocks : blocks_list) {
    std::vector<std::unique_ptr<Config>> configs;
    for (const auto& devices : lists)
      for (const auto& mode : modes) configs.push_back(std::make_unique<Config>(blocks, devices, mode, batch));
    for (auto& c : configs) {
      Split ignored;
      c->first_loss = c->step(ignored);
      for (int i = 0; i < warmup; ++i) c->step(ignored);
    }
    for (int rep = 0; rep < reps; ++rep)
      for (auto& c : configs) c->samples.push_back(c->sample(steps));

    // The check's reference: the first step of the same model on one device
    // (in eval mode for the eval modes).
    double reference = 0, eval_reference = 0;
    {
      Config single(blocks, {Device::parse("cpu:0")}, "sync", batch);
      Split ignored;
      reference = single.step(ignored);
      Config single_eval(blocks, {Device::parse("cpu:0")}, "eval", batch);
      eval_reference = single_eval.step(ignored);
    }
    std::printf("%-6s %2s %-13s %10s %10s %10s %10s %7s\n", "blocks", "K", "mode", "step_ms", "min", "max",
                "samples/s", "#wrong");
    std::map<std::size_t, std::map<std::string, Config*>> by_k;
    for (auto& c : configs) {
      const bench::Summary st = field(c->samples, [](const Split& s) { return s.step; });
      const bool checked = c->mode() != "local+timers" || c->k() == 1;
      const double want = c->evaluates() ? eval_reference : reference;
      const long wrong = std::abs(c->first_loss - want) > 1e-4 * std::abs(want) ? 1 : 0;
      std::printf("%-6ld %2zu %-13s %10.2f %10.2f %10.2f %10.0f %7s\n", blocks, c->k(), c->mode().c_str(),
                  st.median * 1e3, st.min * 1e3, st.max * 1e3, static_cast<double>(batch_size) / st.median,
                  checked ? std::to_string(wrong).c_str() : "-");
      by_k[c->k()][c->mode()] = c.get();
    }
    // The split (Note [Step split]): medians of the per-sample values, ms per step.
    const auto has_mode = [&](const std::string& m) { return std::find(modes.begin(), modes.end(), m) != modes.end(); };
    if (!has_mode("sync+timers") || !has_mode("local+timers")) continue;
    std::printf("# split, ms per step (medians): exchange = bn(sync+timers) - bn(local+timers); other = replica - "
                "conv - bn; runtime = DataParallel calls - replica\n");
    std::printf("%-6s %2s %10s %10s %8s %8s %9s %8s %8s %8s %12s\n", "blocks", "K", "step_sync", "step_local",
                "conv", "bn", "exchange", "other", "runtime", "loss+opt", "sync-local");
    for (auto& [k, by_mode] : by_k) {
      if (!by_mode.count("sync+timers") || !by_mode.count("local+timers")) continue;
      const auto& sync = by_mode["sync+timers"]->samples;
      const auto& local = by_mode["local+timers"]->samples;
      const auto med = [](const std::vector<Split>& v, double Split::*m) {
        return field(v, [m](const Split& s) { return s.*m; }).median * 1e3;
      };
      // The paired differences of the alternating samples.
      std::vector<double> exchange, step_diff;
      for (std::size_t i = 0; i < sync.size() && i < local.size(); ++i) {
        exchange.push_back(sync[i].bn - local[i].bn);
        step_diff.push_back(sync[i].step - local[i].step);
      }
      const double other = med(sync, &Split::replica) - med(sync, &Split::conv) - med(sync, &Split::bn);
      std::printf("%-6ld %2zu %10.2f %10.2f %8.2f %8.2f %9.2f %8.2f %8.2f %8.2f %12.2f\n", blocks, k,
                  med(sync, &Split::step), med(local, &Split::step), med(sync, &Split::conv), med(local, &Split::bn),
                  bench::summarize(exchange).median * 1e3, other, med(sync, &Split::runtime),
                  med(sync, &Split::loss_optim), bench::summarize(step_diff).median * 1e3);
    }
    std::fflush(stdout);
  }
  bench::print_conv_choices();
  return 0;
}
