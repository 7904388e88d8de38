#pragma once
// Catch2 matchers on exceptions, for CHECK_THROWS_MATCHES(expr, Type, matcher).

#include <catch2/catch.hpp>

#include <exception>
#include <string>

namespace syncbn::testing {

/// Matches an exception whose what() contains `part`.
class MessageContains : public Catch::MatcherBase<std::exception> {
 public:
  explicit MessageContains(std::string part) : part_(std::move(part)) {}
  bool match(const std::exception& e) const override { return std::string(e.what()).find(part_) != std::string::npos; }
  std::string describe() const override { return "has a message containing \"" + part_ + "\""; }

 private:
  std::string part_;
};

/// Matches an exception whose what() equals `text`.
class MessageIs : public Catch::MatcherBase<std::exception> {
 public:
  explicit MessageIs(std::string text) : text_(std::move(text)) {}
  bool match(const std::exception& e) const override { return text_ == e.what(); }
  std::string describe() const override { return "has the message \"" + text_ + "\""; }

 private:
  std::string text_;
};

}  // namespace syncbn::testing
