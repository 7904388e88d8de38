// Device: construction, parsing, printing and availability checks.

#include "syncbn/core/device.hpp"

#include <charconv>
#include <string>

#include "syncbn/core/cuda.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core {

Device Device::cpu(int index) {
  SYNCBN_CHECK(index >= 0, "Device: cpu index is ", index, ", expected >= 0");
  return Device(DeviceKind::CPU, index);
}

Device Device::cuda(int index) {
  SYNCBN_CHECK(index >= 0, "Device: cuda index is ", index, ", expected >= 0");
  return Device(DeviceKind::CUDA, index);
}

namespace {

// `text` as it can be printed in a message: control characters (an embedded
// NUL would end the message early) as \xHH.
std::string printable(std::string_view text) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char ch : text) {
    if (ch < 0x20 || ch == 0x7f) {
      out += "\\x";
      out += digits[ch >> 4];
      out += digits[ch & 15];
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out;
}

}  // namespace

Device Device::parse(std::string_view text) {
  const auto fail = [&]() -> Device {
    SYNCBN_THROW(InvalidArgument, "Device: cannot parse \"", printable(text),
                 "\", expected \"cpu\", \"cpu:N\", \"cuda\" or \"cuda:N\" with N >= 0");
  };
  const std::size_t colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  int index = 0;
  if (colon != std::string_view::npos) {
    const std::string_view digits = text.substr(colon + 1);
    // Decimal digits only: from_chars would also take "-0".
    if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string_view::npos)
      return fail();
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec != std::errc() || end != digits.data() + digits.size() || index < 0) return fail();
  }
  if (kind == "cpu") return Device(DeviceKind::CPU, index);
  if (kind == "cuda") return Device(DeviceKind::CUDA, index);
  return fail();
}

std::string Device::str() const { return std::string(is_cpu() ? "cpu:" : "cuda:") + std::to_string(index_); }

void Device::check_available() const {
  if (is_cpu()) return;
  SYNCBN_CHECK_T(Unsupported, cuda::is_built(), "Device: ", str(),
                 " was requested, expected a CPU device: this build of syncbn has no CUDA backend (configure with "
                 "SYNCBN_CUDA=ON on a machine with nvcc)");
  const int count = cuda::device_count();
  SYNCBN_CHECK(index_ < count, "Device: ", str(), " does not exist, expected an index below ", count, " (", count,
               " CUDA device(s) found)");
}

}  // namespace syncbn::core
