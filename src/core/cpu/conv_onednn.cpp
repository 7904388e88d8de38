// The oneDNN engine of the CPU convolutions.
//
// Note [Convolutions on oneDNN]
// oneDNN's fast convolution kernels read and write blocked layouts
// (nChw16c on AVX-512, nChw8c on AVX2) and weights in a blocked order of
// their own; on plain NCHW operands it falls back to a GEMM lowering like
// syncbn's own. So each primitive is created with the layouts left to
// oneDNN ("any"), and the NCHW operands are reordered into them and the
// results back, as PyTorch does with NCHW tensors. For channels-last
// (NHWC) activations the primitive is asked for NHWC itself: oneDNN has
// kernels that read and write it (brgconv and jit "nxc"), so only the
// weights are reordered. Left to "any", oneDNN chose nChw16c there too, and
// the activations' reorders made the ResNet step 25% slower (56.5 against
// 72.4 ms, docs/performance.md). The weights' reorders are repeated at every
// call: in training the weights change at every step, and the forward and
// the input gradient want different blocked orders of them; they cost about
// 1% of the convolutions' time (measured with ONEDNN_VERBOSE). Where the
// caller promises unchanging weights, the reordered copies are kept (Note
// [Frozen weights]). Primitive descriptors
// and primitives cost tens of microseconds to create (oneDNN generates the
// kernel's code), so each thread keeps them per shape and stage, with the
// reorders and the blocked buffers they need, and only rebinds the
// caller's pointers at each call. oneDNN runs a primitive on the calling
// thread's OpenMP team: omp_get_max_threads() of that thread, which
// DataParallel sets for each replica's worker (Note [BLAS threads] in
// src/parallel/data_parallel.cpp).

#include "cpu/conv_onednn.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

// OpenMP's per-thread setting, in the runtime oneDNN runs on (linked by
// cmake/SyncbnDnnl.cmake; declared here so that no compiler's omp.h, which
// may belong to another runtime, is needed).
extern "C" {
int omp_get_max_threads(void);
void omp_set_num_threads(int threads);
}

#include "syncbn/error.hpp"

namespace syncbn::cpu::onednn {
namespace {

using core::detail::Conv2dShape;
using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
constexpr auto f32 = dnnl::memory::data_type::f32;

enum class Stage : int { Forward, ForwardBias, BackwardInput, BackwardWeight };

struct Key {
  Conv2dShape s;
  Stage stage;
  bool operator==(const Key& o) const noexcept {
    const auto fields = [](const Key& k) {
      const Conv2dShape& v = k.s;
      return std::make_tuple(v.n, v.c_in, v.h, v.w, v.c_out, v.kh, v.kw, v.stride_h, v.stride_w, v.pad_h, v.pad_w,
                             v.dilation_h, v.dilation_w, v.groups, v.channels_last, static_cast<int>(k.stage));
    };
    return fields(*this) == fields(o);
  }
};

struct KeyHash {
  std::size_t operator()(const Key& k) const noexcept {
    std::size_t h = static_cast<std::size_t>(k.stage) * 2 + (k.s.channels_last ? 1 : 0);
    for (const std::int64_t v : {k.s.n, k.s.c_in, k.s.h, k.s.w, k.s.c_out, k.s.kh, k.s.kw, k.s.stride_h, k.s.stride_w,
                                 k.s.pad_h, k.s.pad_w, k.s.dilation_h, k.s.dilation_w, k.s.groups})
      h = h * 1000003u ^ static_cast<std::size_t>(v);
    return h;
  }
};

// One operand: the caller's NCHW or NHWC memory, and where the primitive wants a
// different layout, a buffer in it with the reorder between the two.
struct Operand {
  dnnl::memory user;
  std::optional<dnnl::memory> inner;
  std::optional<dnnl::reorder> to_inner, to_user;

  Operand(const dnnl::memory::desc& user_md, const dnnl::memory::desc& inner_md, const dnnl::engine& eng,
          bool read, bool written)
      : user(user_md, eng, DNNL_MEMORY_NONE) {
    if (inner_md == user_md) return;
    inner.emplace(inner_md, eng);
    if (read) to_inner.emplace(user, *inner);
    if (written) to_user.emplace(*inner, user);
  }
  dnnl::memory& used() { return inner ? *inner : user; }
  void bind(const void* p) { user.set_data_handle(const_cast<void*>(p)); }
  void before(dnnl::stream& strm) {
    if (to_inner) to_inner->execute(strm, user, *inner);
  }
  void after(dnnl::stream& strm) {
    if (to_user) to_user->execute(strm, *inner, user);
  }
};

struct Geometry {
  dims src, weights, dst, strides, dilates, pad_l, pad_r;
  tag weights_tag;
  // The activations' layout asked of the primitive: left to oneDNN for
  // NCHW operands, NHWC itself for NHWC ones (Note [Convolutions on oneDNN]).
  tag activations;
};

Geometry geometry_of(const Conv2dShape& s) {
  Geometry g;
  g.src = {s.n, s.c_in, s.h, s.w};
  g.dst = {s.n, s.c_out, s.oh, s.ow};
  if (s.groups == 1) {
    g.weights = {s.c_out, s.c_in, s.kh, s.kw};
    g.weights_tag = tag::oihw;
  } else {
    g.weights = {s.groups, s.c_out / s.groups, s.c_in / s.groups, s.kh, s.kw};
    g.weights_tag = tag::goihw;
  }
  g.activations = s.channels_last ? tag::nhwc : tag::any;
  g.strides = {s.stride_h, s.stride_w};
  g.dilates = {s.dilation_h - 1, s.dilation_w - 1};  // oneDNN counts the gaps
  g.pad_l = {s.pad_h, s.pad_w};
  // The right padding that gives PyTorch's output size: the last window
  // may end before the padded input does.
  g.pad_r = {(s.oh - 1) * s.stride_h + s.dilation_h * (s.kh - 1) + 1 - s.h - s.pad_h,
             (s.ow - 1) * s.stride_w + s.dilation_w * (s.kw - 1) + 1 - s.w - s.pad_w};
  return g;
}

// Note [Frozen weights]
// Under cpu::FrozenConvWeights the weights are the caller's promise not to
// change, so the forward and the input gradient reorder each weight once
// into the primitive's blocked order and keep the copy: per thread (the
// replica workers convolve their own weights), keyed by the layer's shape
// and stage (which fix the blocked order) and the weight's address (layers
// of one shape share a primitive). In inference the forward's weight
// reorder is 1.5-3.5% of the forward of the ResNet's 3x3 layers
// (ONEDNN_VERBOSE, AVX-512: 0.010-0.027 ms against 0.32-1.29 ms). Each
// outermost guard starts an epoch; a thread drops its copies when it sees
// the epoch change, so copies never outlive the promise they rest on.
std::mutex g_freeze_mutex;
int g_freeze_depth = 0;          // guarded by g_freeze_mutex
std::uint64_t g_last_epoch = 0;  // guarded by g_freeze_mutex
std::atomic<std::uint64_t> g_epoch{0};  // the epoch of the guards alive, 0 where none is

struct KeptKey {
  Key key;
  const void* weights;
  bool operator==(const KeptKey& o) const noexcept { return weights == o.weights && key == o.key; }
};
struct KeptKeyHash {
  std::size_t operator()(const KeptKey& k) const noexcept {
    return KeyHash{}(k.key) * 31u ^ std::hash<const void*>{}(k.weights);
  }
};

// This thread's copies for the epoch it last saw.
struct KeptWeights {
  std::uint64_t epoch = 0;
  std::unordered_map<KeptKey, dnnl::memory, KeptKeyHash> copies;

  // The epoch now, the copies of an earlier one dropped.
  std::uint64_t sync() {
    const std::uint64_t now = g_epoch.load(std::memory_order_acquire);
    if (now != epoch) {
      copies.clear();
      epoch = now;
    }
    return now;
  }
};

struct Context {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  KeptWeights kept;
};

Context& context() {
  thread_local Context ctx;
  return ctx;
}

dnnl::convolution_forward::primitive_desc forward_pd(const Geometry& g, bool bias, const dnnl::engine& eng) {
  const dnnl::memory::desc src(g.src, f32, g.activations), wei(g.weights, f32, tag::any),
      dst(g.dst, f32, g.activations);
  const dnnl::memory::desc b = bias ? dnnl::memory::desc({g.dst[1]}, f32, tag::x) : dnnl::memory::desc();
  const dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
                                          wei, b, dst, g.strides, g.dilates, g.pad_l, g.pad_r);
  return {d, eng};
}

// A primitive with its operands, ready to run on rebound pointers.
struct Prepared {
  dnnl::primitive primitive;
  std::vector<std::pair<int, Operand>> operands;  // (DNNL_ARG_*, operand)
  std::vector<float> weight_grad;                  // oneDNN writes dw; syncbn accumulates

  Operand& operand(int arg) {
    for (auto& [a, op] : operands)
      if (a == arg) return op;
    SYNCBN_THROW(Error, "oneDNN convolution: no operand ", arg);
  }
  // The primitive's arguments, built once: dnnl::memory objects are
  // handles, so rebinding an operand's pointer (bind) shows through them.
  std::unordered_map<int, dnnl::memory> args;

  // kept_weights: the weights already in the primitive's order (Note
  // [Frozen weights]), or null to reorder them here.
  void run(dnnl::stream& strm, const dnnl::memory* kept_weights) {
    for (auto& [arg, op] : operands) {
      if (arg == DNNL_ARG_WEIGHTS) {
        args.insert_or_assign(arg, kept_weights != nullptr ? *kept_weights : op.used());
        if (kept_weights != nullptr) continue;
      }
      op.before(strm);
    }
    primitive.execute(strm, args);
    for (auto& [arg, op] : operands) op.after(strm);
    strm.wait();
  }
};

std::unique_ptr<Prepared> prepare(const Key& key, const dnnl::engine& eng) {
  const Conv2dShape& s = key.s;
  const Geometry g = geometry_of(s);
  const tag activations = s.channels_last ? tag::nhwc : tag::nchw;
  const dnnl::memory::desc src_user(g.src, f32, activations), dst_user(g.dst, f32, activations),
      wei_user(g.weights, f32, g.weights_tag);
  auto p = std::make_unique<Prepared>();
  switch (key.stage) {
    case Stage::Forward:
    case Stage::ForwardBias: {
      const bool bias = key.stage == Stage::ForwardBias;
      const auto pd = forward_pd(g, bias, eng);
      p->primitive = dnnl::convolution_forward(pd);
      p->operands.emplace_back(DNNL_ARG_SRC, Operand(src_user, pd.src_desc(), eng, true, false));
      p->operands.emplace_back(DNNL_ARG_WEIGHTS, Operand(wei_user, pd.weights_desc(), eng, true, false));
      if (bias) p->operands.emplace_back(DNNL_ARG_BIAS, Operand(pd.bias_desc(), pd.bias_desc(), eng, true, false));
      p->operands.emplace_back(DNNL_ARG_DST, Operand(dst_user, pd.dst_desc(), eng, false, true));
      break;
    }
    case Stage::BackwardInput: {
      const auto hint = forward_pd(g, false, eng);
      const dnnl::memory::desc dsrc(g.src, f32, g.activations), wei(g.weights, f32, tag::any),
          ddst(g.dst, f32, g.activations);
      const dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct, dsrc, wei, ddst, g.strides,
                                                    g.dilates, g.pad_l, g.pad_r);
      const dnnl::convolution_backward_data::primitive_desc pd(d, eng, hint);
      p->primitive = dnnl::convolution_backward_data(pd);
      p->operands.emplace_back(DNNL_ARG_DIFF_DST, Operand(dst_user, pd.diff_dst_desc(), eng, true, false));
      p->operands.emplace_back(DNNL_ARG_WEIGHTS, Operand(wei_user, pd.weights_desc(), eng, true, false));
      p->operands.emplace_back(DNNL_ARG_DIFF_SRC, Operand(src_user, pd.diff_src_desc(), eng, false, true));
      break;
    }
    case Stage::BackwardWeight: {
      const auto hint = forward_pd(g, false, eng);
      const dnnl::memory::desc src(g.src, f32, g.activations), dwei(g.weights, f32, tag::any),
          ddst(g.dst, f32, g.activations);
      const dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct, src, dwei, ddst, g.strides,
                                                       g.dilates, g.pad_l, g.pad_r);
      const dnnl::convolution_backward_weights::primitive_desc pd(d, eng, hint);
      p->primitive = dnnl::convolution_backward_weights(pd);
      p->operands.emplace_back(DNNL_ARG_SRC, Operand(src_user, pd.src_desc(), eng, true, false));
      p->operands.emplace_back(DNNL_ARG_DIFF_DST, Operand(dst_user, pd.diff_dst_desc(), eng, true, false));
      p->operands.emplace_back(DNNL_ARG_DIFF_WEIGHTS, Operand(wei_user, pd.diff_weights_desc(), eng, false, true));
      p->weight_grad.resize(static_cast<std::size_t>(s.c_out * (s.c_in / s.groups) * s.kh * s.kw));
      break;
    }
  }
  for (auto& [arg, op] : p->operands) p->args.emplace(arg, op.used());
  return p;
}

// This thread's prepared primitives; bounded, since a program that runs
// many shapes (the test suite) would otherwise keep every one.
constexpr std::size_t kMaxPrepared = 256;

Prepared& prepared(const Key& key) {
  thread_local std::unordered_map<Key, std::unique_ptr<Prepared>, KeyHash> cache;
  if (auto it = cache.find(key); it != cache.end()) return *it->second;
  if (cache.size() >= kMaxPrepared) cache.clear();
  std::unique_ptr<Prepared> p;
  try {
    p = prepare(key, context().eng);
  } catch (const dnnl::error& e) {
    SYNCBN_THROW(Error, "conv2d: oneDNN refused the convolution (", e.what(), ")");
  }
  return *cache.emplace(key, std::move(p)).first->second;
}

// The kept copy of the weights at `w` in the order `p` reads them (made on
// first use), or null where no guard is alive or `p` reads them as they are.
const dnnl::memory* kept_weights(Prepared& p, const Key& key, const float* w) {
  Context& ctx = context();
  if (ctx.kept.sync() == 0) return nullptr;
  Operand& weights = p.operand(DNNL_ARG_WEIGHTS);
  if (!weights.inner) return nullptr;
  const KeptKey kept_key{key, w};
  if (auto it = ctx.kept.copies.find(kept_key); it != ctx.kept.copies.end()) return &it->second;
  dnnl::memory copy(weights.inner->get_desc(), ctx.eng);
  dnnl::reorder(weights.user, copy).execute(ctx.strm, weights.user, copy);
  ctx.strm.wait();
  return &ctx.kept.copies.emplace(kept_key, std::move(copy)).first->second;
}

void run(Prepared& p, const char* op, const Key* key = nullptr, const float* w = nullptr) {
  try {
    p.run(context().strm, key != nullptr ? kept_weights(p, *key, w) : nullptr);
  } catch (const dnnl::error& e) {
    SYNCBN_THROW(Error, op, ": oneDNN failed (", e.what(), ")");
  }
}

}  // namespace

void conv_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const Key key{s, bias != nullptr ? Stage::ForwardBias : Stage::Forward};
  Prepared& p = prepared(key);
  p.operand(DNNL_ARG_SRC).bind(x);
  p.operand(DNNL_ARG_WEIGHTS).bind(w);
  if (bias != nullptr) p.operand(DNNL_ARG_BIAS).bind(bias);
  p.operand(DNNL_ARG_DST).bind(y);
  run(p, "conv2d", &key, w);
}

void conv_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const Key key{s, Stage::BackwardInput};
  Prepared& p = prepared(key);
  p.operand(DNNL_ARG_DIFF_DST).bind(dy);
  p.operand(DNNL_ARG_WEIGHTS).bind(w);
  p.operand(DNNL_ARG_DIFF_SRC).bind(dx);
  run(p, "conv2d_backward_input", &key, w);
}

void conv_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
  Prepared& p = prepared({s, Stage::BackwardWeight});
  p.operand(DNNL_ARG_SRC).bind(x);
  p.operand(DNNL_ARG_DIFF_DST).bind(dy);
  p.operand(DNNL_ARG_DIFF_WEIGHTS).bind(p.weight_grad.data());
  run(p, "conv2d_backward_weight");
  // The stage accumulates, as the im2col engine's does.
  const std::size_t n = p.weight_grad.size();
  for (std::size_t i = 0; i < n; ++i) dw[i] += p.weight_grad[i];
}

void freeze_weights() {
  const std::lock_guard lock(g_freeze_mutex);
  if (g_freeze_depth++ == 0) g_epoch.store(++g_last_epoch, std::memory_order_release);
}

void thaw_weights() noexcept {
  const std::lock_guard lock(g_freeze_mutex);
  if (--g_freeze_depth == 0) g_epoch.store(0, std::memory_order_release);
}

std::size_t kept_weights() noexcept { return context().kept.copies.size(); }

int threads() noexcept { return omp_get_max_threads(); }

void set_threads(int threads) noexcept { omp_set_num_threads(threads); }

}  // namespace syncbn::cpu::onednn
