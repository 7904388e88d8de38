#pragma once
// Parsing the names of state entries ("state.3.exp_avg", "base_lrs.1"),
// shared by the optimizers and the schedules.

#include <charconv>
#include <cstddef>
#include <optional>
#include <string_view>

namespace syncbn::optim::detail {

/// A decimal index with no sign and no leading zero ("0", "12"), or nothing:
/// one spelling per index, so that an entry cannot be given twice under two
/// names ("state.1" and "state.01").
inline std::optional<std::size_t> parse_index(std::string_view text) {
  if (text.empty() || (text.size() > 1 && text.front() == '0')) return std::nullopt;
  std::size_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace syncbn::optim::detail
