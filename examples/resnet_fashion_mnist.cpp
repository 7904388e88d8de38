// resnet_fashion_mnist: a small ResNet learns Fashion-MNIST under
// DataParallel on logical CPU devices or GPUs, its batch norm synchronized
// across the replicas (or per replica, or none), with SGD, Adam or AdamW, a
// warm-up and a schedule, checkpoints that resume exactly, a CSV of the steps
// and a progress bar (resnet_fashion_mnist_usage.txt lists the flags).
//
// The run is a function of its flags: the images of each step come from a
// shuffled order that depends on (seed, epoch) only, the weights from the
// seed, and every reduction runs in replica order, so two runs with the same
// flags train the same model, and a run saved after step k and resumed ends
// bit for bit where the uninterrupted run ends (the test suite checks it).

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "resnet_fashion_mnist_usage.hpp"
#include "syncbn/syncbn.hpp"

namespace {

using namespace syncbn;
using Clock = std::chrono::steady_clock;

constexpr const char* kProgram = "resnet_fashion_mnist";

// ---------------------------------------------------------------- flags

struct Flags {
  std::vector<Device> devices{Device::cpu(0), Device::cpu(1), Device::cpu(2), Device::cpu(3)};
  std::int64_t per_device_batch = 32;
  std::vector<std::int64_t> widths{16, 32, 64};
  std::int64_t blocks = 1;
  std::string bn = "sync";
  std::string layout = "nchw";  // or "nhwc": the network channels-last
  std::int64_t epochs = 3;
  std::optional<std::int64_t> steps;
  std::string optimizer = "sgd";
  std::optional<double> lr, momentum, weight_decay;  // defaults depend on the optimizer and the batch
  std::string schedule = "cosine";
  std::int64_t warmup = 50;
  std::int64_t train_limit = -1;  // -1: all images
  std::int64_t test_limit = -1;
  std::uint64_t seed = 1;
  std::string save, resume, csv;
  bool quiet = false;
  std::string dist;   // "" (one process) or "mpi"
  int processes = 1;  // the MPI job's processes with --dist mpi
  int rank = 0;       // this process's rank

  // Every process's images of a step: per device x devices x processes.
  std::int64_t local_batch() const { return per_device_batch * static_cast<std::int64_t>(devices.size()); }
  std::int64_t global_batch() const { return local_batch() * processes; }
  bool speaks() const { return rank == 0; }  // the process that prints and writes files
};

// A bad flag: the message, a pointer to --help (the usage text is long enough
// to push the message off the screen), exit status 2.
[[noreturn]] void bad_input(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n(%s --help lists the flags)\n", kProgram, what.c_str(), kProgram);
  std::exit(2);
}

std::int64_t parse_int(const std::string& flag, const std::string& text, std::int64_t min) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < min)
    bad_input(flag + ": expected an integer >= " + std::to_string(min) + ", got '" + text + "'");
  return v;
}

std::string short_number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

// A finite number in [min, max) (max_open) or [min, ...) (no max).
double parse_number(const std::string& flag, const std::string& text, double min, bool min_open,
                    std::optional<double> max_open = std::nullopt) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  const bool in_range = std::isfinite(v) && (min_open ? v > min : v >= min) && (!max_open || v < *max_open);
  if (text.empty() || *end != '\0' || !in_range) {
    std::string range = std::string(min_open ? "> " : ">= ") + short_number(min);
    if (max_open) range += " and < " + short_number(*max_open);
    bad_input(flag + ": expected a number " + range + ", got '" + text + "'");
  }
  return v;
}

std::string parse_choice(const std::string& flag, const std::string& text, const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), text) != choices.end()) return text;
  std::string expected;
  for (std::size_t i = 0; i < choices.size(); ++i)
    expected.append(i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ").append(choices[i]);
  bad_input(flag + ": expected " + expected + ", got '" + text + "'");
}

std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  while (begin <= list.size()) {
    const std::size_t end = std::min(list.find(',', begin), list.size());
    parts.push_back(list.substr(begin, end - begin));
    begin = end + 1;
  }
  return parts;
}

std::vector<Device> parse_devices(const std::string& list) {
  std::vector<Device> devices;
  for (const std::string& name : split_commas(list)) {
    try {
      devices.push_back(Device::parse(name));
    } catch (const Error& e) {
      bad_input(std::string("--devices: ") + e.what());
    }
  }
  if (devices.size() > static_cast<std::size_t>(core::kMaxReplicas))
    bad_input("--devices: " + std::to_string(devices.size()) + " devices, expected at most " +
              std::to_string(core::kMaxReplicas));
  return devices;
}

// "16,32,64", as --widths takes it.
std::string widths_text(const std::vector<std::int64_t>& widths) {
  std::string text;
  for (std::int64_t w : widths) text.append(text.empty() ? "" : ",").append(std::to_string(w));
  return text;
}

std::vector<std::int64_t> parse_widths(const std::string& list) {
  std::vector<std::int64_t> widths;
  for (const std::string& w : split_commas(list)) widths.push_back(parse_int("--widths", w, 1));
  return widths;
}

Flags parse_flags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) bad_input(flag + ": expected a value, got none");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (flag == "--devices") {
      f.devices = parse_devices(value());
    } else if (flag == "--per-device-batch") {
      f.per_device_batch = parse_int(flag, value(), 1);
    } else if (flag == "--widths") {
      f.widths = parse_widths(value());
    } else if (flag == "--blocks") {
      f.blocks = parse_int(flag, value(), 1);
    } else if (flag == "--bn") {
      f.bn = parse_choice(flag, value(), {"sync", "local", "none"});
    } else if (flag == "--layout") {
      f.layout = parse_choice(flag, value(), {"nchw", "nhwc"});
    } else if (flag == "--epochs") {
      f.epochs = parse_int(flag, value(), 1);
    } else if (flag == "--steps") {
      f.steps = parse_int(flag, value(), 1);
    } else if (flag == "--optimizer") {
      f.optimizer = parse_choice(flag, value(), {"sgd", "adam", "adamw"});
    } else if (flag == "--lr") {
      f.lr = parse_number(flag, value(), 0.0, /*min_open=*/true);
    } else if (flag == "--momentum") {
      f.momentum = parse_number(flag, value(), 0.0, false, 1.0);
    } else if (flag == "--weight-decay") {
      f.weight_decay = parse_number(flag, value(), 0.0, false);
    } else if (flag == "--schedule") {
      f.schedule = parse_choice(flag, value(), {"cosine", "step", "none"});
    } else if (flag == "--warmup") {
      f.warmup = parse_int(flag, value(), 0);
    } else if (flag == "--train-limit") {
      f.train_limit = parse_int(flag, value(), 1);
    } else if (flag == "--test-limit") {
      f.test_limit = parse_int(flag, value(), 1);
    } else if (flag == "--seed") {
      f.seed = static_cast<std::uint64_t>(parse_int(flag, value(), 0));
    } else if (flag == "--save") {
      f.save = value();
    } else if (flag == "--resume") {
      f.resume = value();
    } else if (flag == "--csv") {
      f.csv = value();
    } else if (flag == "--quiet") {
      f.quiet = true;
    } else if (flag == "--dist") {
      f.dist = value();
      if (f.dist != "mpi") bad_input("--dist: expected mpi, got '" + f.dist + "'");
    } else {
      bad_input("unknown flag '" + flag + "', expected one of those --help lists");
    }
  }
  return f;
}

// Where --save puts the optimizer, the schedule and the step counters.
std::string state_path(const std::string& model_path) { return model_path + ".optim.safetensors"; }

// Checks between flags and defaults that depend on other flags.
void resolve_flags(Flags& f) {
  if (f.momentum && f.optimizer != "sgd")
    bad_input("--momentum: applies to --optimizer sgd, got --optimizer " + f.optimizer +
              " (Adam's betas keep PyTorch's defaults)");
  const bool sgd = f.optimizer == "sgd";
  // Linear scaling: 0.1 is the usual SGD rate of a ResNet at batch 128.
  if (!f.lr) f.lr = sgd ? 0.1 * static_cast<double>(f.global_batch()) / 128.0 : 1e-3;
  if (!f.momentum) f.momentum = 0.9;
  if (!f.weight_decay) f.weight_decay = sgd ? 5e-4 : f.optimizer == "adamw" ? 0.05 : 0.0;
  for (const Device& d : f.devices) {
    try {
      d.check_available();
    } catch (const Error& e) {
      bad_input(std::string("--devices: ") + e.what());
    }
  }
  if (!f.resume.empty()) {
    for (const std::string& path : {f.resume, state_path(f.resume)}) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(path, ec))
        bad_input("--resume: '" + path + "' is not a file, expected one that --save wrote");
    }
  }
  if (!f.save.empty()) {
    const std::filesystem::path dir = std::filesystem::path(f.save).parent_path();
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::is_directory(dir, ec))
      bad_input("--save: '" + dir.string() + "' is not a directory, expected the directory of '" + f.save + "'");
  }
}

// ---------------------------------------------------------------- setup

std::shared_ptr<nn::Module> make_model(const Flags& f, const std::shared_ptr<comm::ProcessGroup>& world) {
  nn::ResNetOptions options;
  options.widths = f.widths;
  options.blocks_per_stage = f.blocks;
  options.batch_norm = f.bn != "none";
  options.seed = f.seed;
  options.device = f.devices.front();
  options.layout = f.layout == "nhwc" ? core::ChannelLayout::Last : core::ChannelLayout::First;
  std::shared_ptr<nn::Module> net = nn::resnet(options);
  return f.bn == "sync" ? nn::convert_sync_batchnorm(net, sync::kDefaultSyncTimeout, world) : net;
}

// The model over this process's devices: DataParallel, or with --dist mpi
// DistributedDataParallel over the job's processes, each on its rows of the
// global batch.
struct Trainer {
  std::optional<parallel::DataParallel> local;
  std::optional<distributed::DistributedDataParallel> distributed;
  std::shared_ptr<comm::ProcessGroup> world;  // null without --dist
  bool channels_last = false;

  Trainer(std::shared_ptr<nn::Module> model, const Flags& f, std::shared_ptr<comm::ProcessGroup> group)
      : world(std::move(group)), channels_last(f.layout == "nhwc") {
    const parallel::DataParallelOptions options{.allow_shared_devices = true};
    if (world)
      distributed.emplace(std::move(model), f.devices, world, distributed::DistributedOptions{.local = options});
    else
      local.emplace(std::move(model), f.devices, std::nullopt, options);
  }
  // The data set's NCHW images are permuted as they enter a channels-last
  // network; inside the step nothing changes layout.
  Tensor forward(const Tensor& images) {
    const Tensor x = channels_last ? core::to_channels_last(images) : images;
    return distributed ? distributed->forward(x) : local->forward(x);
  }
  Tensor backward(const Tensor& dy) { return distributed ? distributed->backward(dy) : local->backward(dy); }
  void train(bool on) { distributed ? distributed->train(on) : local->train(on); }
  // The sum over the processes (the value itself in one process).
  double sum(double value) const {
    return world ? world->all_reduce_sum(std::span(&value, 1), "resnet_fashion_mnist: sum", sync::kDefaultSyncTimeout)[0]
                 : value;
  }
};

std::int64_t count_parameters(nn::Module& model) {
  std::int64_t n = 0;
  for (nn::Parameter* p : model.parameters()) n += p->value.numel();
  return n;
}

// Weight decay on the convolution and linear weights only: decaying the
// batch-norm scales and shifts and the biases only fights the normalisation.
std::unique_ptr<optim::Optimizer> make_optimizer(nn::Module& model, const Flags& f) {
  optim::ParamGroups groups = optim::split_weight_decay(model, *f.weight_decay);
  if (f.optimizer == "sgd")
    return std::make_unique<optim::SGD>(std::move(groups), optim::SGDOptions{.lr = *f.lr, .momentum = *f.momentum});
  if (f.optimizer == "adam") return std::make_unique<optim::Adam>(std::move(groups), optim::AdamOptions{.lr = *f.lr});
  return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions{.lr = *f.lr});
}

// Stepped once per iteration; spans all epochs (not --steps, which only
// stops early, so that a stopped run resumes on the same schedule).
std::unique_ptr<optim::LRSchedule> make_schedule(optim::Optimizer& opt, const Flags& f, std::int64_t total_steps) {
  const std::int64_t after_warmup = std::max<std::int64_t>(1, total_steps - f.warmup);
  std::unique_ptr<optim::LRSchedule> main;
  if (f.schedule == "cosine")
    main = std::make_unique<optim::CosineAnnealingLR>(opt, after_warmup);
  else if (f.schedule == "step")
    main = std::make_unique<optim::MultiStepLR>(opt, std::vector<std::int64_t>{after_warmup / 2, after_warmup * 3 / 4});
  else
    main = std::make_unique<optim::MultiStepLR>(opt, std::vector<std::int64_t>{});  // constant
  if (f.warmup == 0) return main;
  return std::make_unique<optim::LinearWarmup>(std::move(main), f.warmup, /*start_factor=*/0.1);
}

data::Dataset load_split(data::Split split, std::int64_t limit) {
  return data::load_fashion_mnist(split, data::default_fashion_mnist_dir(), limit);
}

// ---------------------------------------------------------------- progress

// Where the run stands; what a checkpoint keeps besides the model, the
// optimizer and the schedule, so that a resumed run also prints and writes
// what the uninterrupted run would.
struct Progress {
  std::int64_t step = 0;   // completed steps over all epochs
  std::int64_t epoch = 0;  // the current epoch, from 0
  std::int64_t epoch_images = 0, epoch_correct = 0;
  double loss_ema = 0;  // smoothed training loss, for the bar
};

std::string format_duration(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  char text[32];
  if (s >= 3600)
    std::snprintf(text, sizeof text, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(text, sizeof text, "%ld:%02ld", s / 60, s % 60);
  return text;
}

// 1234567 -> "1,234,567" (n >= 0).
std::string with_thousands(std::int64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// One line: on a terminal redrawn in place (\r) at most 10 times a second and
// never wider than 79 columns (the bar shrinks first); otherwise plain lines
// about every 10% of the run, for logs.
class ProgressBar {
 public:
  ProgressBar(bool enabled, std::int64_t last_step, std::int64_t epochs)
      : enabled_(enabled), tty_(isatty(fileno(stdout)) != 0), last_step_(last_step), epochs_(epochs),
        plain_every_(std::max<std::int64_t>(1, last_step / 10)) {}
  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void update(const Progress& p, double accuracy, double samples_per_s, double eta_s) {
    if (!enabled_) return;
    const bool last = p.step == last_step_;
    if (tty_) {
      const auto now = Clock::now();
      if (!last && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      redraw(line(p, accuracy, samples_per_s, eta_s, true));
    } else if (last || p.step % plain_every_ == 0) {
      std::printf("%s\n", line(p, accuracy, samples_per_s, eta_s, false).c_str());
      std::fflush(stdout);
    }
  }

  // Ends the line on a terminal (idempotent).
  void finish() {
    if (enabled_ && tty_ && drawn_) std::printf("\n");
    drawn_ = false;
  }

 private:
  static constexpr std::size_t kColumns = 79;

  std::string line(const Progress& p, double accuracy, double samples_per_s, double eta_s, bool with_bar) const {
    char head[64], tail[128];
    std::snprintf(head, sizeof head, "epoch %lld/%lld", static_cast<long long>(p.epoch + 1),
                  static_cast<long long>(epochs_));
    std::snprintf(tail, sizeof tail, " %lld/%lld loss %.3f acc %4.1f%% %.0f/s ETA %s",
                  static_cast<long long>(p.step), static_cast<long long>(last_step_), p.loss_ema, 100.0 * accuracy,
                  samples_per_s, format_duration(eta_s).c_str());
    std::string text = head;
    const std::size_t fixed = text.size() + std::strlen(tail) + 3;  // + " [" and "]"
    if (with_bar && fixed + 10 <= kColumns)
      text.append(" ").append(bar(std::min<std::size_t>(kColumns - fixed, 30), p.step));
    text += tail;
    if (text.size() > kColumns) text.resize(kColumns);
    return text;
  }

  std::string bar(std::size_t width, std::int64_t step) const {
    const auto filled = static_cast<std::size_t>(static_cast<double>(width) * static_cast<double>(step) /
                                                 static_cast<double>(std::max<std::int64_t>(1, last_step_)));
    std::string inside(std::min(filled, width), '=');
    if (inside.size() < width) inside += '>';
    inside.resize(width, ' ');
    return "[" + inside + "]";
  }

  // Pads with spaces over what the previous line left.
  void redraw(std::string text) {
    const std::size_t shown = text.size();
    if (text.size() < drawn_width_) text.resize(drawn_width_, ' ');
    drawn_width_ = shown;
    drawn_ = true;
    std::printf("\r%s", text.c_str());
    std::fflush(stdout);
  }

  bool enabled_, tty_;
  std::int64_t last_step_, epochs_, plain_every_;
  bool drawn_ = false;
  std::size_t drawn_width_ = 0;
  Clock::time_point last_draw_{};
};

class CsvLog {
 public:
  explicit CsvLog(const std::string& path) {
    if (path.empty()) return;
    out_.open(path);
    if (!out_) bad_input("--csv: cannot write '" + path + "', expected a writable file");
    out_ << "step,epoch,loss,running_accuracy,lr,samples_per_s\n";
  }
  void row(const Progress& p, double loss, double accuracy, double lr, double samples_per_s) {
    if (!out_.is_open()) return;
    out_ << p.step << ',' << p.epoch + 1 << ',' << loss << ',' << accuracy << ',' << lr << ',' << samples_per_s
         << '\n';
  }

 private:
  std::ofstream out_;
};

// ---------------------------------------------------------------- steps

std::int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const auto scores = logits.to_vector<float>();
  const auto truth = labels.to_vector<std::int64_t>();
  const std::int64_t classes = logits.size(1);
  std::int64_t correct = 0;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    const float* row = scores.data() + static_cast<std::int64_t>(i) * classes;
    correct += (std::max_element(row, row + classes) - row) == truth[i];
  }
  return correct;
}

struct StepResult {
  double loss;
  std::int64_t correct;
  double lr;  // the learning rate this step used
};

// One step on the global batch; with --dist, this process trains on its
// rows of it, and the loss and the correct answers are the whole batch's.
StepResult train_step(const Flags& f, Trainer& trainer, optim::Optimizer& opt, optim::LRSchedule& schedule,
                      nn::CrossEntropyLoss& loss_fn, const data::Batch& batch) {
  const std::int64_t first = f.rank * f.local_batch();
  const Tensor images = f.processes > 1 ? batch.images.rows(first, first + f.local_batch()) : batch.images;
  const Tensor labels = f.processes > 1 ? batch.labels.rows(first, first + f.local_batch()) : batch.labels;
  opt.zero_grad();
  const Tensor logits = trainer.forward(images);
  const double loss = loss_fn.forward(logits, labels).item();
  trainer.backward(loss_fn.backward());
  const double lr = opt.param_groups().front().lr;
  opt.step();
  schedule.step();
  // Equal parts: the whole batch's mean loss is the mean of the parts'.
  return {trainer.sum(loss) / f.processes,
          static_cast<std::int64_t>(trainer.sum(static_cast<double>(count_correct(logits, labels)))), lr};
}

// Accuracy in eval mode (running statistics), in batches across the
// replicas; with --dist, each process takes every P-th batch. The weights
// stay as they are until it returns, so the CPU convolutions may keep their
// reordered copies (cpu::FrozenConvWeights).
double evaluate(const Flags& f, Trainer& trainer, const data::Dataset& test, std::int64_t batch_size) {
  const cpu::FrozenConvWeights frozen;
  trainer.train(false);
  data::BatchIterator batches(test, {.batch_size = batch_size, .shuffle = false, .device = f.devices.front()});
  std::int64_t correct = 0;
  for (std::int64_t i = 0; auto batch = batches.next(); ++i)
    if (i % f.processes == f.rank) correct += count_correct(trainer.forward(batch->images), batch->labels);
  trainer.train(true);
  return trainer.sum(static_cast<double>(correct)) / static_cast<double>(test.labels.numel());
}

// ---------------------------------------------------------------- checkpoints

// The settings a resumed run must share with the saved one (those that
// change what it computes); --steps, --devices and the outputs may differ.
std::map<std::string, std::string> run_settings(const Flags& f) {
  const auto number = [](double v) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", v);
    return std::string(text);
  };
  return {{"global batch", std::to_string(f.global_batch())},
          {"--widths", widths_text(f.widths)},
          {"--blocks", std::to_string(f.blocks)},
          {"--bn", f.bn},
          {"--epochs", std::to_string(f.epochs)},
          {"--optimizer", f.optimizer},
          {"--lr", number(*f.lr)},
          {"--momentum", number(*f.momentum)},
          {"--weight-decay", number(*f.weight_decay)},
          {"--schedule", f.schedule},
          {"--warmup", std::to_string(f.warmup)},
          {"--train-limit", std::to_string(f.train_limit)},
          {"--seed", std::to_string(f.seed)}};
}

void append_prefixed(optim::StateDict& out, const std::string& prefix, const optim::StateDict& state) {
  for (const auto& [name, tensor] : state) out.emplace_back(prefix + name, tensor);
}

optim::StateDict progress_state(const Progress& p) {
  const auto int64 = [](std::int64_t v) { return Tensor::from_vector(std::vector<std::int64_t>{v}, Shape{}); };
  return {{"step", int64(p.step)},
          {"epoch", int64(p.epoch)},
          {"epoch_images", int64(p.epoch_images)},
          {"epoch_correct", int64(p.epoch_correct)},
          {"loss_ema", Tensor::from_vector(std::vector<double>{p.loss_ema}, Shape{})}};
}

void save_checkpoint(const Flags& f, nn::Module& model, const optim::Optimizer& opt,
                     const optim::LRSchedule& schedule, const Progress& p) {
  nn::save(model, f.save);
  optim::StateDict state;
  append_prefixed(state, "optimizer.", opt.state_dict());
  append_prefixed(state, "schedule.", schedule.state_dict());
  append_prefixed(state, "progress.", progress_state(p));
  auto metadata = run_settings(f);
  metadata["program"] = kProgram;
  core::save_safetensors(state_path(f.save), state, metadata, kProgram);
}

// The entries of `state` named prefix + x, as x.
optim::StateDict take_prefixed(const optim::StateDict& state, const std::string& prefix) {
  optim::StateDict out;
  for (const auto& [name, tensor] : state)
    if (name.rfind(prefix, 0) == 0) out.emplace_back(name.substr(prefix.size()), tensor);
  return out;
}

void check_same_settings(const Flags& f, const std::map<std::string, std::string>& saved) {
  for (const auto& [name, value] : run_settings(f)) {
    const auto it = saved.find(name);
    const std::string theirs = it == saved.end() ? "missing" : it->second;
    if (theirs != value)
      bad_input("--resume: '" + f.resume + "' was saved by a run with " + name + " " + theirs + ", expected " +
                value + " as in this run (resume with the saved run's flags)");
  }
}

Progress restore_progress(const optim::StateDict& state) {
  Progress p;
  for (const auto& [name, tensor] : state) {
    if (name == "step") p.step = static_cast<std::int64_t>(tensor.item());
    else if (name == "epoch") p.epoch = static_cast<std::int64_t>(tensor.item());
    else if (name == "epoch_images") p.epoch_images = static_cast<std::int64_t>(tensor.item());
    else if (name == "epoch_correct") p.epoch_correct = static_cast<std::int64_t>(tensor.item());
    else if (name == "loss_ema") p.loss_ema = tensor.item();
  }
  return p;
}

// Loads what save_checkpoint wrote; every failure is a bad --resume.
Progress load_checkpoint(const Flags& f, nn::Module& model, optim::Optimizer& opt, optim::LRSchedule& schedule) {
  try {
    const core::SafetensorsFile file = core::load_safetensors(state_path(f.resume), "load_safetensors");
    const auto program = file.metadata.find("program");
    if (program == file.metadata.end() || program->second != kProgram)
      bad_input("--resume: '" + state_path(f.resume) + "' was not written by " + kProgram + ", expected its --save");
    check_same_settings(f, file.metadata);
    nn::load(model, f.resume);
    opt.load_state_dict(take_prefixed(file.tensors, "optimizer."));
    schedule.load_state_dict(take_prefixed(file.tensors, "schedule."));
    return restore_progress(take_prefixed(file.tensors, "progress."));
  } catch (const Error& e) {
    bad_input(std::string("--resume: ") + e.what());
  }
}

// ---------------------------------------------------------------- the run

void print_setup(const Flags& f, nn::Module& model, std::int64_t train_images, std::int64_t test_images,
                 std::int64_t steps_per_epoch) {
  std::string devices;
  for (const Device& d : f.devices) devices.append(devices.empty() ? "" : ",").append(d.str());
  const std::string widths = widths_text(f.widths);
  std::printf("%s: ResNet (widths %s, %lld block(s) per stage), %s parameters, bn %s%s\n", kProgram, widths.c_str(),
              static_cast<long long>(f.blocks), with_thousands(count_parameters(model)).c_str(), f.bn.c_str(),
              f.layout == "nhwc" ? ", channels-last" : "");
  if (f.processes > 1)
    std::printf("  %d MPI processes, each on devices %s: %d x %zu replica(s) x %lld images = global batch %lld\n",
                f.processes, devices.c_str(), f.processes, f.devices.size(), static_cast<long long>(f.per_device_batch),
                static_cast<long long>(f.global_batch()));
  else
    std::printf("  devices %s: %zu replica(s) x %lld images = global batch %lld\n", devices.c_str(), f.devices.size(),
                static_cast<long long>(f.per_device_batch), static_cast<long long>(f.global_batch()));
  std::printf("  %lld training / %lld test images, %lld epoch(s) of %lld steps\n", static_cast<long long>(train_images),
              static_cast<long long>(test_images), static_cast<long long>(f.epochs),
              static_cast<long long>(steps_per_epoch));
  std::printf("  %s lr %g", f.optimizer.c_str(), *f.lr);
  if (f.optimizer == "sgd") std::printf(" momentum %g", *f.momentum);
  std::printf(" weight decay %g, %s schedule, %lld warm-up steps\n", *f.weight_decay, f.schedule.c_str(),
              static_cast<long long>(f.warmup));
  std::fflush(stdout);
}

// Positions the iterator at the start of step p.step (its epoch, then past
// the batches already taken in that epoch).
void seek(data::BatchIterator& batches, const Progress& p, std::int64_t steps_per_epoch) {
  batches.start_epoch(p.epoch);
  for (std::int64_t i = p.epoch * steps_per_epoch; i < p.step; ++i) batches.next();
}

// Makes the steps from p.step up to last_step (updating p, the CSV and the
// progress line); returns the seconds they took.
double train(const Flags& f, Trainer& trainer, optim::Optimizer& opt, optim::LRSchedule& schedule,
             data::BatchIterator& batches, std::int64_t last_step, Progress& p, CsvLog& csv) {
  ProgressBar bar(!f.quiet && f.speaks(), last_step, f.epochs);
  nn::CrossEntropyLoss loss_fn;
  const std::int64_t first_step = p.step;
  const auto start = Clock::now();
  while (p.step < last_step) {
    auto batch = batches.next();
    if (!batch) {  // the epoch is done
      p = Progress{p.step, p.epoch + 1, 0, 0, p.loss_ema};
      batches.start_epoch(p.epoch);
      continue;
    }
    const StepResult r = train_step(f, trainer, opt, schedule, loss_fn, *batch);
    p.loss_ema = p.step == 0 ? r.loss : 0.95 * p.loss_ema + 0.05 * r.loss;
    ++p.step;
    p.epoch_images += batch->labels.numel();
    p.epoch_correct += r.correct;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double done = static_cast<double>(p.step - first_step);
    const double rate = static_cast<double>(f.global_batch()) * done / elapsed;
    const double accuracy = static_cast<double>(p.epoch_correct) / static_cast<double>(p.epoch_images);
    csv.row(p, r.loss, accuracy, r.lr, rate);
    bar.update(p, accuracy, rate, elapsed / done * static_cast<double>(last_step - p.step));
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void print_results(const Flags& f, double test_accuracy, std::int64_t test_images, const Progress& p,
                   std::int64_t steps_trained, double train_s, double wall_s) {
  std::printf("%s: test accuracy %.2f%% (%lld images) after %lld steps\n", kProgram, 100.0 * test_accuracy,
              static_cast<long long>(test_images), static_cast<long long>(p.step));
  const double images = static_cast<double>(steps_trained * f.global_batch());
  std::printf("  training %.1f s (%.0f samples/s), wall time %.1f s\n", train_s,
              steps_trained > 0 ? images / train_s : 0.0, wall_s);
  if (!f.save.empty()) std::printf("  saved '%s' and '%s'\n", f.save.c_str(), state_path(f.save).c_str());
}

int run(const Flags& f, const std::shared_ptr<comm::ProcessGroup>& world) {
  const auto wall_start = Clock::now();
  CsvLog csv(f.speaks() ? f.csv : std::string());  // first: a bad --csv fails before the data is read
  const data::Dataset train_set = load_split(data::Split::Train, f.train_limit);
  const data::Dataset test_set = load_split(data::Split::Test, f.test_limit);
  const std::int64_t train_images = train_set.labels.numel();
  if (train_images < f.global_batch())
    bad_input("--train-limit: " + std::to_string(train_images) + " training images make no batch of " +
              std::to_string(f.global_batch()) + ", expected at least --per-device-batch x devices");

  auto model = make_model(f, world);
  // Full batches only: every replica gets --per-device-batch images each step.
  data::BatchIterator batches(
      train_set, {.batch_size = f.global_batch(), .seed = f.seed, .drop_last = true, .device = f.devices.front()});
  const std::int64_t steps_per_epoch = batches.batches_per_epoch();
  const std::int64_t total_steps = f.epochs * steps_per_epoch;
  auto opt = make_optimizer(*model, f);
  auto schedule = make_schedule(*opt, f, total_steps);
  Progress p;
  if (!f.resume.empty()) p = load_checkpoint(f, *model, *opt, *schedule);  // every process reads the same files
  Trainer trainer(model, f, world);
  const std::int64_t last_step = std::min(total_steps, f.steps.value_or(total_steps));

  if (f.speaks()) print_setup(f, *model, train_images, test_set.labels.numel(), steps_per_epoch);
  if (p.step > 0 && f.speaks())
    std::printf("  resumed from '%s' after step %lld\n", f.resume.c_str(), static_cast<long long>(p.step));
  const std::int64_t first_step = p.step;
  if (p.step < last_step) seek(batches, p, steps_per_epoch);
  const double train_s = train(f, trainer, *opt, *schedule, batches, last_step, p, csv);
  if (!f.save.empty() && f.speaks()) save_checkpoint(f, *model, *opt, *schedule, p);

  const double test_accuracy = evaluate(f, trainer, test_set, 2 * f.local_batch());
  const double wall_s = std::chrono::duration<double>(Clock::now() - wall_start).count();
  if (f.speaks()) print_results(f, test_accuracy, test_set.labels.numel(), p, p.step - first_step, train_s, wall_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags = parse_flags(argc, argv);
  try {
    // --dist mpi: this process is one rank of the job; the global batch and
    // the default learning rate count every process's devices.
    std::optional<distributed::MpiSession> mpi;
    std::shared_ptr<comm::ProcessGroup> world;
    if (flags.dist == "mpi") {
      mpi.emplace();
      world = mpi->world();
      flags.processes = world->size();
      flags.rank = world->rank();
    }
    resolve_flags(flags);
    return run(flags, world);
  } catch (const std::exception& e) {  // syncbn::Error, or the standard library's (e.g. out of memory)
    std::fprintf(stderr, "%s: %s\n", kProgram, e.what());
    return 1;
  }
}
