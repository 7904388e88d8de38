#pragma once
// Linear: y = x W^T + b.

#include <cstdint>

#include "syncbn/nn/module.hpp"

namespace syncbn::nn {

/// Options of Linear.
struct LinearOptions {
  bool bias = true;
  /// Seed of PyTorch's default initialisation: weight and bias uniform in
  /// [-1/sqrt(in_features), 1/sqrt(in_features)].
  std::uint64_t seed = 0;
  DType dtype = DType::Float32;
  Device device = Device();
};

/// Fully connected layer: input (N, in_features) -> output (N, out_features).
class Linear : public Cloneable<Linear> {
 public:
  /// Throws InvalidArgument for in_features < 1, out_features < 1 or a
  /// non-floating dtype.
  Linear(std::int64_t in_features, std::int64_t out_features, LinearOptions options = {});
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

  Parameter& weight() { return parameter(weight_); }
  /// Throws InvalidArgument when the layer has no bias.
  Parameter& bias();
  std::int64_t in_features() const noexcept { return in_; }
  std::int64_t out_features() const noexcept { return out_; }

 protected:
  void clear_cache() override { input_ = Tensor(); }

 private:
  std::int64_t in_, out_;
  bool has_bias_;
  std::size_t weight_ = 0, bias_ = 0;
  Tensor input_;
};

}  // namespace syncbn::nn
