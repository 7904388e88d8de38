#pragma once
// Sequential: a chain of modules.

#include <memory>
#include <string>
#include <vector>

#include "syncbn/nn/module.hpp"

namespace syncbn::nn {

/// Runs its children in order; backward runs their backward in reverse
/// order. Children are named "0", "1", ... unless added with a name.
class Sequential : public Cloneable<Sequential> {
 public:
  Sequential() = default;
  /// Throws InvalidArgument for a null module.
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules);
  /// Appends a module named by its position.
  Sequential& add(std::shared_ptr<Module> module);
  /// Appends a module with a name.
  Sequential& add(const std::string& name, std::shared_ptr<Module> module);

  std::string describe() const override;
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;
  std::size_t size() const noexcept { return children().size(); }
  /// The i-th child; InvalidArgument when out of range.
  Module& operator[](std::size_t i);

 protected:
  void clear_cache() override { forward_failed_ = false; }

 private:
  // A failed forward leaves the children before the failure with its
  // tensors and the others with the previous forward's: no backward fits.
  bool forward_failed_ = false;
};

}  // namespace syncbn::nn
