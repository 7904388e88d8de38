// The CPU convolutions' kernel table: which engine runs each call.
//
// Note [Choosing a convolution engine]
// Neither engine is the faster everywhere. oneDNN's blocked kernels run the
// 3x3 layers of a ResNet at 150-230 GFLOP/s on one core where im2col + the
// BLAS reaches about 100, but oneDNN 2.6 has slow paths: measured on the
// 2-core AMD EPYC of docs/performance.md, the input gradient of stride-2
// 3x3 layers took 20-47 ms against 3.5-4.3 ms for their forward, a
// 1-channel stem 17x syncbn's time. So Auto measures both engines the first
// time a layer shape reaches a stage (forward, input gradient, weight
// gradient), on the call's own operands into scratch outputs: oneDNN once
// to build its primitive, then each engine three times, alternately, the
// fastest run of each kept. It then runs the faster engine for that shape and
// stage for the rest of the process, as cuDNN's algorithm search does on a
// GPU. Every replica that meets the shape first measures at the same time,
// under the load the step itself makes; the first to finish decides. A
// pinned engine (set_conv_engine, SYNCBN_CONV_ENGINE) skips the search, for
// reproducible runs: the two engines sum in different orders, so their
// results differ in the last bits. float64 always runs on im2col (oneDNN
// has no float64 convolutions).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/conv_im2col.hpp"
#include "cpu/kernel_set.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/error.hpp"
#if SYNCBN_WITH_DNNL
#include "cpu/conv_onednn.hpp"
#endif

namespace syncbn::cpu {
namespace {

using core::detail::Conv2dShape;
constexpr const char* kVariable = "SYNCBN_CONV_ENGINE";

// The setting: unset until the first call reads the environment.
constexpr int kUnread = -1;
std::atomic<int> g_setting{kUnread};

ConvEngine default_engine() { return has_onednn() ? ConvEngine::Auto : ConvEngine::Im2col; }

ConvEngine engine_from_environment() {
  const char* named = std::getenv(kVariable);
  if (named == nullptr || *named == '\0') return default_engine();
  const std::string name = named;
  for (const ConvEngine e : {ConvEngine::Auto, ConvEngine::Im2col, ConvEngine::OneDnn}) {
    if (name != conv_engine_name(e)) continue;
    SYNCBN_CHECK(e != ConvEngine::OneDnn || has_onednn(), kVariable, "=", name,
                 ": this build has no oneDNN, expected auto or im2col (build with libdnnl-dev installed)");
    return e;
  }
  SYNCBN_THROW(InvalidArgument, kVariable, "=", name, ": unknown engine, expected auto, im2col or onednn");
}

// What Auto chose, for the whole process.
struct Choices {
  std::mutex mutex;
  std::vector<ConvChoice> log;
};

Choices& choices() {
  static Choices c;
  return c;
}

#if SYNCBN_WITH_DNNL

enum class Stage : int { Forward, BackwardInput, BackwardWeight };

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::Forward: return "forward";
    case Stage::BackwardInput: return "input gradient";
    case Stage::BackwardWeight: return "weight gradient";
  }
  return "?";
}

using Key = std::tuple<int, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                       std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                       std::int64_t, std::int64_t, bool>;

Key key_of(Stage stage, const Conv2dShape& s) {
  return {static_cast<int>(stage), s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride_h, s.stride_w, s.pad_h,
          s.pad_w, s.dilation_h, s.dilation_w, s.groups, s.channels_last};
}

std::string describe(const Conv2dShape& s) {
  const auto pair = [](std::int64_t a, std::int64_t b) { return std::to_string(a) + "x" + std::to_string(b); };
  return std::to_string(s.n) + "x" + std::to_string(s.c_in) + "x" + pair(s.h, s.w) + " -> " + std::to_string(s.c_out) +
         ", " + pair(s.kh, s.kw) + ", stride " + pair(s.stride_h, s.stride_w) + ", padding " + pair(s.pad_h, s.pad_w) +
         ", dilation " + pair(s.dilation_h, s.dilation_w) + ", groups " + std::to_string(s.groups) +
         (s.channels_last ? ", channels-last" : "");
}

std::map<Key, ConvEngine>& chosen_engines() {  // under choices().mutex
  static std::map<Key, ConvEngine> chosen;
  return chosen;
}

std::optional<ConvEngine> chosen(Stage stage, const Conv2dShape& s) {
  const std::lock_guard lock(choices().mutex);
  const auto& known = chosen_engines();
  const auto it = known.find(key_of(stage, s));
  if (it == known.end()) return std::nullopt;
  return it->second;
}

double ms_of(const std::function<void()>& run) {
  const auto start = std::chrono::steady_clock::now();
  run();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// Alternate runs of the two engines per measurement, the fastest of each
// kept: one pair alone let a moment of load on a shared machine decide.
constexpr int kTrialPairs = 3;

// Note [One pool of threads beside oneDNN]
// The two engines run on two thread pools: oneDNN on the calling thread's
// OpenMP team, the BLAS of im2col on OpenBLAS's own workers, which keep
// spinning for about 0.1 s (2^28 cycles, OpenBLAS's default timeout) after
// each call that used them. With both pools at one thread per core, every
// oneDNN run in that time shares its cores with spinning workers: measured
// on 2 cores with the defaults (2 OpenBLAS threads, 2 OpenMP threads), the
// oneDNN trials right after im2col's took 15-31 ms where they take 0.6-1.0,
// and in each of three runs of the ResNet step Auto put one layer's stage
// on im2col that way (the stem's forward, a 1x1 shortcut's forward, and
// the 64x64x7x7 weight gradient, which made the step 63 ms instead of 41).
// im2col's own per-sample products lose with OpenBLAS's second thread here
// anyway (pinned, 64x32x14x14 forward and backward 13.5 ms at 2 threads,
// 8.6 at 1). So, unless the user chose
// (OPENBLAS_NUM_THREADS or GOTO_NUM_THREADS set), Auto gives the BLAS one
// thread per call before it measures, and the cores stay with oneDNN's
// OpenMP threads, one pool. A later set_blas_threads holds until the next
// search. With OPENBLAS_THREAD_TIMEOUT=4 (workers that stop spinning at
// once) the trials were right at 2 BLAS threads as well. What this cannot
// reach: OpenBLAS's workers also spin for their first 0.1 s after the
// library loads, so a search that early (a benchmark's first layer) can
// still see them: the 1-channel stem's forward went to im2col in about
// half the starts of bench_conv (0.25 against 0.17 ms); stopping the
// workers would need OpenBLAS's internal shutdown, unsafe while another
// thread is in a call (docs/performance.md has the plan for it).
void leave_cores_to_openmp() {
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("GOTO_NUM_THREADS") != nullptr) return;
  if (blas_threads() > 1) set_blas_threads(1);
}

// Times both engines on scratch outputs (Note [Choosing a convolution
// engine]) and records the faster.
ConvEngine measure(Stage stage, const Conv2dShape& s, const std::function<void()>& on_im2col,
                   const std::function<void()>& on_onednn) {
  leave_cores_to_openmp();
  double im2col_ms = 0, onednn_ms = std::numeric_limits<double>::infinity();
  bool onednn_runs = true;
  try {
    on_onednn();  // builds the primitive
  } catch (const Error&) {
    onednn_runs = false;  // a shape oneDNN refuses runs on im2col
  }
  im2col_ms = ms_of(on_im2col);
  if (onednn_runs) onednn_ms = ms_of(on_onednn);
  for (int pair = 1; pair < kTrialPairs; ++pair) {
    im2col_ms = std::min(im2col_ms, ms_of(on_im2col));
    if (onednn_runs) onednn_ms = std::min(onednn_ms, ms_of(on_onednn));
  }
  const ConvEngine faster = onednn_ms < im2col_ms ? ConvEngine::OneDnn : ConvEngine::Im2col;
  Choices& c = choices();
  const std::lock_guard lock(c.mutex);
  const auto [it, inserted] = chosen_engines().emplace(key_of(stage, s), faster);
  if (inserted) c.log.push_back({describe(s), stage_name(stage), faster, im2col_ms, onednn_ms});
  return it->second;  // the first replica to finish decides
}

// The engine of one float32 call.
ConvEngine engine_for(Stage stage, const Conv2dShape& s, const std::function<void()>& on_im2col,
                      const std::function<void()>& on_onednn) {
  const ConvEngine setting = conv_engine();
  if (setting != ConvEngine::Auto) return setting;
  if (!has_blas()) return ConvEngine::OneDnn;  // im2col needs the BLAS
  if (const auto known = chosen(stage, s)) return *known;
  return measure(stage, s, on_im2col, on_onednn);
}

// Runs one float32 stage on the engine chosen for it: run(engine, out)
// writes the stage's `elements` outputs to out (adding to them where the
// stage accumulates, so that Auto's trials start from zeros).
template <class Run>
void run_float32(Stage stage, const Conv2dShape& s, std::size_t elements, void* out, const Run& run) {
  std::vector<float> scratch;
  const auto trial = [&](ConvEngine engine) {
    return [&, engine] {
      scratch.assign(elements, 0.0f);
      run(engine, scratch.data());
    };
  };
  run(engine_for(stage, s, trial(ConvEngine::Im2col), trial(ConvEngine::OneDnn)), static_cast<float*>(out));
}

std::size_t elements(std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t d) {
  return static_cast<std::size_t>(a * b * c * d);
}

#endif  // SYNCBN_WITH_DNNL

void conv_forward(Device, DType dtype, const Conv2dShape& s, const void* x, const void* w, const void* bias, void* y) {
#if SYNCBN_WITH_DNNL
  if (dtype == DType::Float32) {
    run_float32(Stage::Forward, s, elements(s.n, s.c_out, s.oh, s.ow), y, [&](ConvEngine engine, float* out) {
      if (engine == ConvEngine::OneDnn) {
        onednn::conv_forward(s, static_cast<const float*>(x), static_cast<const float*>(w),
                             static_cast<const float*>(bias), out);
      } else {
        im2col::conv_forward(dtype, s, x, w, bias, out);
      }
    });
    return;
  }
#endif
  im2col::conv_forward(dtype, s, x, w, bias, y);
}

void conv_backward_input(Device, DType dtype, const Conv2dShape& s, const void* dy, const void* w, void* dx) {
#if SYNCBN_WITH_DNNL
  if (dtype == DType::Float32) {
    run_float32(Stage::BackwardInput, s, elements(s.n, s.c_in, s.h, s.w), dx, [&](ConvEngine engine, float* out) {
      if (engine == ConvEngine::OneDnn) {
        onednn::conv_backward_input(s, static_cast<const float*>(dy), static_cast<const float*>(w), out);
      } else {
        im2col::conv_backward_input(dtype, s, dy, w, out);
      }
    });
    return;
  }
#endif
  im2col::conv_backward_input(dtype, s, dy, w, dx);
}

void conv_backward_weight(Device, DType dtype, const Conv2dShape& s, const void* dy, const void* x, void* dw) {
#if SYNCBN_WITH_DNNL
  if (dtype == DType::Float32) {
    run_float32(Stage::BackwardWeight, s, elements(s.c_out, s.c_in / s.groups, s.kh, s.kw), dw,
                [&](ConvEngine engine, float* out) {
                  if (engine == ConvEngine::OneDnn) {
                    onednn::conv_backward_weight(s, static_cast<const float*>(dy), static_cast<const float*>(x), out);
                  } else {
                    im2col::conv_backward_weight(dtype, s, dy, x, out);
                  }
                });
    return;
  }
#endif
  im2col::conv_backward_weight(dtype, s, dy, x, dw);
}

void conv_backward_bias(Device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                        void* db) {
  im2col::conv_backward_bias(dtype, n, c, l, dy, db);
}

}  // namespace

std::string_view conv_engine_name(ConvEngine engine) noexcept {
  switch (engine) {
    case ConvEngine::Auto: return "auto";
    case ConvEngine::Im2col: return "im2col";
    case ConvEngine::OneDnn: return "onednn";
  }
  return "?";
}

bool has_onednn() noexcept { return SYNCBN_WITH_DNNL != 0; }

int onednn_threads() noexcept {
#if SYNCBN_WITH_DNNL
  return onednn::threads();
#else
  return 0;
#endif
}

bool set_onednn_threads(int threads) {
  SYNCBN_CHECK(threads >= 1, "cpu::set_onednn_threads: ", threads, " threads, expected at least 1");
#if SYNCBN_WITH_DNNL
  onednn::set_threads(threads);
  return true;
#else
  return false;
#endif
}

#if SYNCBN_WITH_DNNL
FrozenConvWeights::FrozenConvWeights() { onednn::freeze_weights(); }
FrozenConvWeights::~FrozenConvWeights() { onednn::thaw_weights(); }
std::size_t kept_conv_weights() noexcept { return onednn::kept_weights(); }
#else
FrozenConvWeights::FrozenConvWeights() = default;
FrozenConvWeights::~FrozenConvWeights() = default;
std::size_t kept_conv_weights() noexcept { return 0; }
#endif

ConvEngine conv_engine() {
  int setting = g_setting.load();
  if (setting == kUnread) {
    const ConvEngine from_environment = engine_from_environment();  // throws for a bad name, every call
    int unread = kUnread;
    g_setting.compare_exchange_strong(unread, static_cast<int>(from_environment));
    setting = g_setting.load();
  }
  return static_cast<ConvEngine>(setting);
}

void set_conv_engine(ConvEngine engine) {
  SYNCBN_CHECK(engine == ConvEngine::Auto || engine == ConvEngine::Im2col || engine == ConvEngine::OneDnn,
               "cpu::set_conv_engine: engine ", static_cast<int>(engine),
               ", expected ConvEngine::Auto, Im2col or OneDnn");
  if (engine == ConvEngine::OneDnn && !has_onednn())
    SYNCBN_THROW(Unsupported, "cpu::set_conv_engine: this build has no oneDNN, expected ConvEngine::Auto or Im2col "
                              "(build with libdnnl-dev installed)");
  g_setting.store(static_cast<int>(engine));
}

std::vector<ConvChoice> conv_engine_choices() {
  Choices& c = choices();
  const std::lock_guard lock(c.mutex);
  return c.log;
}

void clear_conv_engine_choices() {
  Choices& c = choices();
  const std::lock_guard lock(c.mutex);
#if SYNCBN_WITH_DNNL
  chosen_engines().clear();
#endif
  c.log.clear();
}

const core::detail::ConvKernels kConvKernels{conv_forward, conv_backward_input, conv_backward_weight,
                                             conv_backward_bias};

}  // namespace syncbn::cpu
