// Sequential: forward in order, backward in reverse order.

#include "syncbn/nn/sequential.hpp"

#include "syncbn/error.hpp"
#include "syncbn/nn/forward_transaction.hpp"

namespace syncbn::nn {

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) add(std::move(m));
}

Sequential& Sequential::add(std::shared_ptr<Module> module) { return add(std::to_string(child_count()), std::move(module)); }

Sequential& Sequential::add(const std::string& name, std::shared_ptr<Module> module) {
  SYNCBN_CHECK(module != nullptr, "Sequential: module '", name, "' is null, expected a module");
  register_module(name, std::move(module));
  return *this;
}

std::string Sequential::describe() const {
  std::string out = "Sequential(";
  for (std::size_t i = 0; i < children().size(); ++i) {
    if (i > 0) out += ", ";
    out += children()[i].second->describe();
  }
  return out + ")";
}

Tensor Sequential::forward(const Tensor& input) {
  check_replica_thread();
  ForwardTransaction transaction;  // Note [All-or-nothing forward]
  forward_failed_ = true;
  Tensor x = input;
  for (std::size_t i = 0; i < child_count(); ++i) x = child(i).forward(x);
  forward_failed_ = false;
  return x;
}

Tensor Sequential::backward(const Tensor& grad_output) {
  check_replica_thread();
  SYNCBN_CHECK(!forward_failed_, "Sequential: backward after a failed forward, expected a successful forward first "
               "(the layers before the failure hold its tensors, the others the previous forward's)");
  Tensor g = grad_output;
  for (std::size_t i = child_count(); i-- > 0;) g = child(i).backward(g);
  return g;
}

Module& Sequential::operator[](std::size_t i) {
  SYNCBN_CHECK(i < child_count(), "Sequential: index ", i, " is out of range, expected < ", child_count());
  return child(i);
}

}  // namespace syncbn::nn
