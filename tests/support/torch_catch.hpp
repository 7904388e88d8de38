#pragma once
// libtorch's headers for a Catch2 test file. Debian's libtorch logs with
// glog, whose logging.h defines a CHECK macro of its own (abort on false,
// nothing on true): included after catch.hpp it silently replaces Catch2's
// CHECK, so the checks would neither count nor report. This header
// includes torch and gives CHECK back to Catch2.

#include <catch2/catch.hpp>
#include <torch/torch.h>

#undef CHECK
#define CHECK(...) INTERNAL_CATCH_TEST("CHECK", Catch::ResultDisposition::ContinueOnFailure, __VA_ARGS__)
