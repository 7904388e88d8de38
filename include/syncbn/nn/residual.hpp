#pragma once
// Residual: y = body(x) + shortcut(x), the shortcut the identity or a module.

#include <memory>

#include "syncbn/nn/module.hpp"

namespace syncbn::nn {

/// Children "body" and, when given, "shortcut" (so a checkpoint names their
/// parameters "body.…" and "shortcut.…"). Backward adds the two branches'
/// input gradients. The outputs of both branches must have one shape.
class Residual : public Cloneable<Residual> {
 public:
  /// Throws InvalidArgument for a null body; a null shortcut is the identity.
  explicit Residual(std::shared_ptr<Module> body, std::shared_ptr<Module> shortcut = nullptr);
  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_cache() override { has_forward_ = false; }

 private:
  bool has_shortcut_;
  bool has_forward_ = false;
  Shape output_shape_;
};

}  // namespace syncbn::nn
