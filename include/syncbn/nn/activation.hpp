#pragma once
// Parameter-free layers: ReLU, Flatten and Identity.

#include "syncbn/nn/module.hpp"

namespace syncbn::nn {

/// y = max(x, 0), any shape.
class ReLU : public Cloneable<ReLU> {
 public:
  std::string describe() const override { return "ReLU()"; }
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { output_ = Tensor(); }

 private:
  Tensor output_;
};

/// (N, d1, d2, ...) -> (N, d1 * d2 * ...), a zero-copy view (rank >= 2).
class Flatten : public Cloneable<Flatten> {
 public:
  std::string describe() const override { return "Flatten()"; }
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { has_input_ = false; }

 private:
  Shape input_shape_;
  Shape output_shape_;
  bool has_input_ = false;
};

/// y = x, any shape: a placeholder that keeps a model's structure (and its
/// checkpoint names) where a layer is left out, e.g. the batch norms of
/// resnet({.batch_norm = false}). Forward returns the input itself (no
/// copy); backward returns grad_output.
class Identity : public Cloneable<Identity> {
 public:
  std::string describe() const override { return "Identity()"; }
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { has_input_ = false; }

 private:
  Shape shape_;
  bool has_input_ = false;
};

}  // namespace syncbn::nn
