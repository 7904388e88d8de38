#pragma once
// The CPU backend's instruction-set levels: which ones this build has, which
// ones this CPU runs, and which one the kernels use (Note [CPU dispatch] in
// docs/design.md).

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace syncbn::cpu {

/// A level of CPU kernels, each compiled for its instruction set.
enum class Capability : unsigned char {
  /// x86-64 (SSE2), or the compiler's default on other architectures: runs everywhere.
  Baseline,
  /// x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE.
  AVX2,
  /// x86-64-v4: v3 plus AVX-512 F, BW, CD, DQ and VL.
  AVX512,
  /// Everything compiled with -march=native (SYNCBN_NATIVE_ARCH builds only):
  /// the build machine's instruction set, the only level such a build has.
  Native,
};

/// "baseline", "avx2", "avx512" or "native": the names SYNCBN_CPU_CAPABILITY takes.
std::string_view capability_name(Capability level) noexcept;

/// The levels this build compiled, lowest first (a configure-time probe
/// leaves out a level whose code the compiler is known to get wrong).
std::vector<Capability> compiled_capabilities();

/// True when this CPU and its operating system can run `level`'s code
/// (Native: assumed true).
bool cpu_supports(Capability level) noexcept;

/// The level every CPU kernel of this process uses, decided at the first
/// call: the one named by the environment variable SYNCBN_CPU_CAPABILITY
/// when it is set (to test a level, or to rule one out), otherwise the
/// highest compiled level that this CPU supports. Throws InvalidArgument,
/// naming the variable and the choices, when the variable names an unknown
/// level, one this build did not compile, or one this CPU cannot run; every
/// CPU kernel call then throws the same error.
Capability active_capability();

/// True when this build found a BLAS (SYNCBN_BLAS) for the CPU convolutions
/// and matrix products; without one, conv2d on a CPU device throws
/// Unsupported and matmul_ (Linear) runs on syncbn's own GEMM.
bool has_blas() noexcept;

/// The two engines of the CPU matrix products behind matmul_ and Linear:
/// the BLAS this build found, or syncbn's own GEMM, compiled for each CPU
/// level (the engine of a build without a BLAS, and of products too large
/// for CBLAS's int sizes). The BLAS is faster (docs/performance.md); the own
/// GEMM sums every element in the same order whatever the other sizes, so a
/// batch split across replicas gives bit-identical rows.
enum class GemmEngine : unsigned char { Blas, Builtin };
/// "blas" or "builtin".
std::string_view gemm_engine_name(GemmEngine engine) noexcept;
/// The engine every later CPU matrix product uses: Blas where the build has
/// a BLAS, unless set_gemm_engine chose otherwise.
GemmEngine gemm_engine() noexcept;
/// Selects it for the whole process (products already running finish on
/// the engine they started on). Throws Unsupported for Blas in a build
/// without a BLAS, changing nothing.
void set_gemm_engine(GemmEngine engine);
/// The threads the BLAS behind the CPU convolutions starts per call (its own
/// pool, shared by every caller), or 0 when it cannot be asked: no BLAS, or
/// one other than OpenBLAS.
int blas_threads() noexcept;
/// Sets them (DataParallel over several CPU devices sets them itself: Note
/// [BLAS threads] in src/parallel/data_parallel.cpp; so does Auto's search of
/// a convolution engine, to one thread, unless OPENBLAS_NUM_THREADS is set:
/// Note [One pool of threads beside oneDNN] in src/core/cpu/conv_engines.cpp).
/// Returns false, changing nothing,
/// when the BLAS cannot be told (no BLAS, or one other than OpenBLAS).
/// Throws InvalidArgument for threads < 1.
bool set_blas_threads(int threads);

/// The engines of the CPU convolutions (Note [Choosing a convolution
/// engine] in src/core/cpu/conv_engines.cpp): im2col + the BLAS (float32
/// and float64, every build with a BLAS), and oneDNN (float32, builds that
/// found libdnnl-dev: SYNCBN_DNNL). Auto measures both at a layer shape's
/// first use, per stage (forward, input gradient, weight gradient), and
/// keeps the faster for the process; float64 always runs on im2col.
enum class ConvEngine : unsigned char { Auto, Im2col, OneDnn };
/// "auto", "im2col" or "onednn": the names SYNCBN_CONV_ENGINE takes.
std::string_view conv_engine_name(ConvEngine engine) noexcept;
/// True when this build has the oneDNN engine.
bool has_onednn() noexcept;
/// The engine setting of every later CPU convolution: the one named by the
/// environment variable SYNCBN_CONV_ENGINE when it is set (read at the first
/// call), otherwise Auto where the build has oneDNN and Im2col where it
/// does not. Throws InvalidArgument, naming the variable and the choices,
/// when it names an unknown engine or oneDNN in a build without it.
ConvEngine conv_engine();
/// Pins an engine for the whole process (reproducible runs, tests), or
/// Auto. Throws Unsupported for OneDnn in a build without it, changing
/// nothing.
void set_conv_engine(ConvEngine engine);

/// What Auto measured for one layer shape and stage, and chose.
struct ConvChoice {
  std::string layer;  // "64x16x28x28 -> 32, 3x3, stride 2x2, padding 1x1, dilation 1x1, groups 1" (NCHW
                      // sizes; ", channels-last" appended for NHWC operands)
  std::string stage;  // "forward", "input gradient" or "weight gradient"
  ConvEngine engine;  // Im2col or OneDnn
  double im2col_ms, onednn_ms;  // onednn_ms infinite: oneDNN refused the shape
};
/// The choices made so far, in the order they were made.
std::vector<ConvChoice> conv_engine_choices();
/// Forgets them: the next use of each shape measures again.
void clear_conv_engine_choices();
/// The threads oneDNN's convolutions start when called from this thread
/// (OpenMP's, per calling thread: OMP_NUM_THREADS, else one per core), or 0
/// in a build without oneDNN.
int onednn_threads() noexcept;
/// Sets them for the calling thread (DataParallel over several CPU devices
/// sets each replica worker's: Note [BLAS threads] in
/// src/parallel/data_parallel.cpp). Returns false, changing nothing, in a
/// build without oneDNN. Throws InvalidArgument for threads < 1.
bool set_onednn_threads(int threads);

/// A promise that the convolutions' weights do not change, for inference
/// (and input gradients) between training runs. While one lives (made on
/// any thread; they nest), the oneDNN engine keeps each weight it reorders
/// into its blocked order, per calling thread, layer shape, stage and
/// weight address, and convolves later calls with that copy rather than
/// reordering the weight again (Note [Frozen weights] in
/// src/core/cpu/conv_onednn.cpp). The promise: every weight a convolution
/// reads while one lives keeps its values and its memory until the last one
/// ends; a weight written (or freed, and another placed at its address)
/// meanwhile may be convolved with its old values. Each thread drops its
/// copies at its first convolution after the last guard ends. Training has
/// no use for it (its weights change at every step); in a build without
/// oneDNN it does nothing.
class FrozenConvWeights {
 public:
  FrozenConvWeights();
  ~FrozenConvWeights();
  FrozenConvWeights(const FrozenConvWeights&) = delete;
  FrozenConvWeights& operator=(const FrozenConvWeights&) = delete;
};
/// The reordered weights the calling thread keeps under FrozenConvWeights
/// (0 in a build without oneDNN).
std::size_t kept_conv_weights() noexcept;

}  // namespace syncbn::cpu
