// Device: parsing, printing, equality and availability checks.

#include <catch2/catch.hpp>

#include <sstream>
#include <climits>
#include <functional>
#include <string>

#include "support/matchers.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/core/device.hpp"
#include "syncbn/error.hpp"

using syncbn::Device;
using syncbn::InvalidArgument;
using syncbn::Unsupported;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;

TEST_CASE("Device strings parse into kinds and indices and print back", "[tensor]") {
  CHECK(Device::parse("cpu") == Device::cpu(0));
  CHECK(Device::parse("cpu:3") == Device::cpu(3));
  CHECK(Device::parse("cuda") == Device::cuda(0));
  CHECK(Device::parse("cuda:7") == Device::cuda(7));
  CHECK(Device::cpu(3).str() == "cpu:3");
  CHECK(Device::cuda(1).str() == "cuda:1");
  std::ostringstream out;
  out << Device::cpu(2);
  CHECK(out.str() == "cpu:2");
  CHECK(Device::cpu(1) != Device::cuda(1));
  CHECK(Device() == Device::cpu(0));
}

TEST_CASE("Malformed device strings are rejected with the accepted forms", "[tensor]") {
  const std::string bad = GENERATE(as<std::string>{}, "gpu:0", "cpu:", "cpu:x", "cuda:-1", "cpu:1:2", "", "CPU:0",
                                   "cuda:1234567", " cpu:0");
  CAPTURE(bad);
  CHECK_THROWS_MATCHES(Device::parse(bad), InvalidArgument,
                       MessageIs("Device: cannot parse \"" + bad +
                                 "\", expected \"cpu\", \"cpu:N\", \"cuda\" or \"cuda:N\" with N >= 0"));
}

TEST_CASE("Negative device indices are rejected", "[tensor]") {
  CHECK_THROWS_MATCHES(Device::cpu(-1), InvalidArgument, MessageIs("Device: cpu index is -1, expected >= 0"));
  CHECK_THROWS_AS(Device::cuda(-2), InvalidArgument);
}

TEST_CASE("Logical CPU devices are always available", "[tensor]") {
  CHECK_NOTHROW(Device::cpu(0).check_available());
  CHECK_NOTHROW(Device::cpu(7).check_available());
}

TEST_CASE("A CUDA device that this build or machine lacks is a clear error", "[tensor]") {
  if (!syncbn::cuda::is_built()) {
    CHECK(syncbn::cuda::device_count() == 0);
    CHECK_THROWS_MATCHES(Device::cuda(0).check_available(), Unsupported,
                         MessageContains("cuda:0 was requested, expected a CPU device: this build of syncbn has no CUDA backend"));
    return;
  }
  const int count = syncbn::cuda::device_count();
  CHECK_THROWS_MATCHES(Device::cuda(count).check_available(), InvalidArgument,
                       MessageIs("Device: cuda:" + std::to_string(count) + " does not exist, expected an index below " +
                                 std::to_string(count) + " (" + std::to_string(count) + " CUDA device(s) found)"));
}

TEST_CASE("Devices with the largest index hash without overflow", "[tensor]") {
  const std::hash<Device> hash;
  CHECK(hash(Device::cpu(INT_MAX)) != hash(Device::cuda(INT_MAX)));
  CHECK(hash(Device::cpu(0)) != hash(Device::cuda(0)));
}

TEST_CASE("Device strings with signs or control characters are rejected and printed readably", "[tensor]") {
  CHECK_THROWS_MATCHES(Device::parse("cpu:-0"), InvalidArgument,
                       MessageIs("Device: cannot parse \"cpu:-0\", expected \"cpu\", \"cpu:N\", \"cuda\" or "
                                 "\"cuda:N\" with N >= 0"));
  CHECK_THROWS_AS(Device::parse("cpu:+1"), InvalidArgument);
  const std::string with_nul("cpu\0:1", 6);
  CHECK_THROWS_MATCHES(Device::parse(with_nul), InvalidArgument,
                       MessageIs("Device: cannot parse \"cpu\\x00:1\", expected \"cpu\", \"cpu:N\", \"cuda\" or "
                                 "\"cuda:N\" with N >= 0"));
}
