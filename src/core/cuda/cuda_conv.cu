// CUDA backend: 2-D convolutions through cuDNN (legacy convolution API).
// Specification: the direct sums of tests/support/conv_spec.hpp, as for the
// CPU backend.
//
// Note [cuDNN choices]
// - Full float32 arithmetic (CUDNN_FMA_MATH, no TF32 tensor cores), so that
//   CUDA and CPU results agree to float32 rounding, as everywhere in syncbn.
// - The algorithm is cuDNN's heuristic choice (the _v7 queries), preferring
//   a deterministic one: the same inputs give the same bits every step.
// - Workspace comes from the device's stream-ordered pool (ScratchBuffer).
// - Bias add and bias gradient are small kernels of their own (the gradient
//   sums in float64, as every reduction of the library).

#include <cstdint>
#include <type_traits>
#include <vector>

#include "backend/dispatch.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_handles.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/cuda_runtime.hpp"
#include "cuda/cuda_types.cuh"

namespace syncbn::cuda::detail {
namespace {

using core::detail::Conv2dShape;

template <class T>
__global__ void add_bias_kernel(long long total, long long c, long long l, const T* bias, T* y) {
  SYNCBN_GRID_STRIDE(i, total) { y[i] += bias[(i / l) % c]; }
}

// One block per channel: db[j] += sum over n and l of dy[i][j][p].
template <class T>
__global__ void bias_grad_kernel(long long n, long long c, long long l, const T* dy, T* db) {
  __shared__ double partial[kBlock];
  const long long j = blockIdx.x;
  double acc = 0.0;
  for (long long e = threadIdx.x; e < n * l; e += blockDim.x) {
    const long long i = e / l, p = e % l;
    acc += static_cast<double>(dy[(i * c + j) * l + p]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int step = blockDim.x / 2; step > 0; step /= 2) {
    if (threadIdx.x < step) partial[threadIdx.x] += partial[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[j] = static_cast<T>(static_cast<double>(db[j]) + partial[0]);
}

void cuda_bias_grad(Device device, DType dtype, std::int64_t n, std::int64_t c, std::int64_t l, const void* dy,
                    void* db) {
  DeviceGuard guard(device.index());
  cudaStream_t stream = stream_for(device.index());
  core::detail::dispatch_floating(dtype, "conv2d_backward_bias", [&](auto tag) {
    using T = decltype(tag);
    bias_grad_kernel<T><<<static_cast<unsigned>(c), kBlock, 0, stream>>>(n, c, l, static_cast<const T*>(dy),
                                                                         static_cast<T*>(db));
    SYNCBN_CUDA_LAUNCH_CHECK();
  });
}

#if SYNCBN_WITH_CUDNN

// The descriptors of one convolution, destroyed with it.
class ConvDescriptors {
 public:
  ConvDescriptors(const Conv2dShape& s, DType dtype) {
    const cudnnDataType_t type = dtype == DType::Float64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    SYNCBN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x_));
    SYNCBN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y_));
    SYNCBN_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w_));
    SYNCBN_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv_));
    // Activations in either layout (cuDNN takes the sizes in NCHW order and
    // the layout apart); the filter is PyTorch's (c_out, c_in / g, kh, kw).
    const cudnnTensorFormat_t activations = s.channels_last ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    SYNCBN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x_, activations, type, i(s.n), i(s.c_in), i(s.h), i(s.w)));
    SYNCBN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y_, activations, type, i(s.n), i(s.c_out), i(s.oh), i(s.ow)));
    SYNCBN_CUDNN_CHECK(
        cudnnSetFilter4dDescriptor(w_, type, CUDNN_TENSOR_NCHW, i(s.c_out), i(s.c_in / s.groups), i(s.kh), i(s.kw)));
    SYNCBN_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv_, i(s.pad_h), i(s.pad_w), i(s.stride_h), i(s.stride_w),
                                                       i(s.dilation_h), i(s.dilation_w), CUDNN_CROSS_CORRELATION,
                                                       type));
    SYNCBN_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv_, i(s.groups)));
    SYNCBN_CUDNN_CHECK(cudnnSetConvolutionMathType(conv_, CUDNN_FMA_MATH));
  }
  ~ConvDescriptors() {
    if (conv_ != nullptr) cudnnDestroyConvolutionDescriptor(conv_);
    if (w_ != nullptr) cudnnDestroyFilterDescriptor(w_);
    if (y_ != nullptr) cudnnDestroyTensorDescriptor(y_);
    if (x_ != nullptr) cudnnDestroyTensorDescriptor(x_);
  }
  ConvDescriptors(const ConvDescriptors&) = delete;
  ConvDescriptors& operator=(const ConvDescriptors&) = delete;

  cudnnTensorDescriptor_t x() const { return x_; }
  cudnnTensorDescriptor_t y() const { return y_; }
  cudnnFilterDescriptor_t w() const { return w_; }
  cudnnConvolutionDescriptor_t conv() const { return conv_; }

 private:
  static int i(std::int64_t v) { return static_cast<int>(v); }  // sizes were checked to fit (core/conv.cpp)
  cudnnTensorDescriptor_t x_ = nullptr, y_ = nullptr;
  cudnnFilterDescriptor_t w_ = nullptr;
  cudnnConvolutionDescriptor_t conv_ = nullptr;
};

// The first successful algorithm of a heuristic ranking, a deterministic one if any.
template <class Perf>
const Perf& pick(const std::vector<Perf>& ranked, int returned, const char* op) {
  const Perf* any = nullptr;
  for (int k = 0; k < returned; ++k) {
    if (ranked[k].status != CUDNN_STATUS_SUCCESS) continue;
    if (ranked[k].determinism == CUDNN_DETERMINISTIC) return ranked[k];
    if (any == nullptr) any = &ranked[k];
  }
  if (any == nullptr) SYNCBN_THROW(Unsupported, op, ": cuDNN offers no algorithm for this convolution");
  return *any;
}

// alpha and beta in the type cuDNN expects for the data type.
template <class T>
struct Scalars {
  T one = 1, zero = 0;
};

void cuda_conv_forward(Device device, DType dtype, const Conv2dShape& s, const void* x, const void* w,
                       const void* bias, void* y) {
  DeviceGuard guard(device.index());
  cudnnHandle_t handle = cudnn_handle(device.index());
  const ConvDescriptors d(s, dtype);
  std::vector<cudnnConvolutionFwdAlgoPerf_t> ranked(CUDNN_CONVOLUTION_FWD_ALGO_COUNT);
  int returned = 0;
  SYNCBN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, d.x(), d.w(), d.conv(), d.y(),
                                                            static_cast<int>(ranked.size()), &returned, ranked.data()));
  const auto& algo = pick(ranked, returned, "conv2d");
  const ScratchBuffer workspace(device.index(), algo.memory);
  core::detail::dispatch_floating(dtype, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    const Scalars<T> k;
    SYNCBN_CUDNN_CHECK(cudnnConvolutionForward(handle, &k.one, d.x(), x, d.w(), w, d.conv(), algo.algo,
                                               workspace.get(), algo.memory, &k.zero, d.y(), y));
    if (bias != nullptr) {
      const long long total = s.n * s.c_out * s.oh * s.ow;
      // NHWC: the channel of element i is i % c_out (positions per channel run: 1).
      add_bias_kernel<T><<<grid_for(total), kBlock, 0, stream_for(device.index())>>>(
          total, s.c_out, s.channels_last ? 1 : s.oh * s.ow, static_cast<const T*>(bias), static_cast<T*>(y));
      SYNCBN_CUDA_LAUNCH_CHECK();
    }
  });
}

void cuda_conv_backward_input(Device device, DType dtype, const Conv2dShape& s, const void* dy, const void* w,
                              void* dx) {
  DeviceGuard guard(device.index());
  cudnnHandle_t handle = cudnn_handle(device.index());
  const ConvDescriptors d(s, dtype);
  std::vector<cudnnConvolutionBwdDataAlgoPerf_t> ranked(CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT);
  int returned = 0;
  SYNCBN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
      handle, d.w(), d.y(), d.conv(), d.x(), static_cast<int>(ranked.size()), &returned, ranked.data()));
  const auto& algo = pick(ranked, returned, "conv2d_backward_input");
  const ScratchBuffer workspace(device.index(), algo.memory);
  core::detail::dispatch_floating(dtype, "conv2d_backward_input", [&](auto tag) {
    using T = decltype(tag);
    const Scalars<T> k;
    SYNCBN_CUDNN_CHECK(cudnnConvolutionBackwardData(handle, &k.one, d.w(), w, d.y(), dy, d.conv(), algo.algo,
                                                    workspace.get(), algo.memory, &k.zero, d.x(), dx));
  });
}

void cuda_conv_backward_weight(Device device, DType dtype, const Conv2dShape& s, const void* dy, const void* x,
                               void* dw) {
  DeviceGuard guard(device.index());
  cudnnHandle_t handle = cudnn_handle(device.index());
  const ConvDescriptors d(s, dtype);
  std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> ranked(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT);
  int returned = 0;
  SYNCBN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
      handle, d.x(), d.y(), d.conv(), d.w(), static_cast<int>(ranked.size()), &returned, ranked.data()));
  const auto& algo = pick(ranked, returned, "conv2d_backward_weight");
  const ScratchBuffer workspace(device.index(), algo.memory);
  core::detail::dispatch_floating(dtype, "conv2d_backward_weight", [&](auto tag) {
    using T = decltype(tag);
    const Scalars<T> k;
    // beta = 1: the gradient accumulates, as every parameter gradient does.
    SYNCBN_CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, &k.one, d.x(), x, d.y(), dy, d.conv(), algo.algo,
                                                      workspace.get(), algo.memory, &k.one, d.w(), dw));
  });
}

#else

[[noreturn]] void no_cudnn(const char* op) {
  SYNCBN_THROW(Unsupported, op, ": this build of syncbn found no cuDNN, expected it for CUDA convolutions "
                                "(install cuDNN with the CUDA toolkit and reconfigure)");
}

void cuda_conv_forward(Device, DType, const Conv2dShape&, const void*, const void*, const void*, void*) {
  no_cudnn("conv2d");
}
void cuda_conv_backward_input(Device, DType, const Conv2dShape&, const void*, const void*, void*) {
  no_cudnn("conv2d_backward_input");
}
void cuda_conv_backward_weight(Device, DType, const Conv2dShape&, const void*, const void*, void*) {
  no_cudnn("conv2d_backward_weight");
}

#endif

}  // namespace

const core::detail::ConvKernels kConvKernels{cuda_conv_forward, cuda_conv_backward_input, cuda_conv_backward_weight,
                                             cuda_bias_grad};

}  // namespace syncbn::cuda::detail
