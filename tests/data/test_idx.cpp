// read_idx on IDX files written by the test, plain and gzip-compressed, and
// on every kind of bad file.

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "support/idx_files.hpp"
#include "support/matchers.hpp"
#include "support/temp_dir.hpp"
#include "syncbn/data/idx.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using data::read_idx;
using syncbn::testing::idx_bytes;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using syncbn::testing::read_file;
using syncbn::testing::TempDir;
using syncbn::testing::write_file;
using syncbn::testing::write_gzip_file;
using syncbn::testing::write_idx_file;

namespace {

std::vector<std::uint8_t> iota_bytes(std::size_t n, std::uint8_t first = 0) {
  std::vector<std::uint8_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(first + i);
  return out;
}

}  // namespace

TEST_CASE("read_idx reads labels, images and other ranks, gzip-compressed or plain", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  const TempDir dir;
  const std::string path = dir.file(gzip ? "array.gz" : "array");

  const auto images = iota_bytes(2 * 3 * 4, 7);
  write_idx_file(path, idx_bytes({2, 3, 4}, images), gzip);
  data::IdxArray got = read_idx(path);
  CHECK(got.dims == std::vector<std::int64_t>{2, 3, 4});
  CHECK(got.bytes == images);

  const std::vector<std::uint8_t> labels{9, 0, 0, 3, 255};
  write_idx_file(path, idx_bytes({5}, labels), gzip);
  got = read_idx(path);
  CHECK(got.dims == std::vector<std::int64_t>{5});
  CHECK(got.bytes == labels);

  // Five dimensions, and an empty array.
  write_idx_file(path, idx_bytes({1, 2, 1, 3, 2}, iota_bytes(12)), gzip);
  got = read_idx(path);
  CHECK(got.dims == std::vector<std::int64_t>{1, 2, 1, 3, 2});
  CHECK(got.bytes == iota_bytes(12));
  write_idx_file(path, idx_bytes({0, 28, 28}, {}), gzip);
  got = read_idx(path);
  CHECK(got.dims == std::vector<std::int64_t>{0, 28, 28});
  CHECK(got.bytes.empty());
}

TEST_CASE("read_idx reads a file larger than its read chunk", "[data][idx]") {
  const TempDir dir;
  const std::string path = dir.file("large.gz");
  const auto bytes = iota_bytes(3 * 1000 * 1000, 1);  // three 1 MB chunks, the last one partial
  write_gzip_file(path, idx_bytes({3000, 1000}, bytes));
  const data::IdxArray got = read_idx(path);
  CHECK(got.dims == std::vector<std::int64_t>{3000, 1000});
  CHECK(got.bytes == bytes);
}

TEST_CASE("read_idx names the path of a missing file, a directory and a file too short for the magic number",
          "[data][idx]") {
  const TempDir dir;
  const std::string missing = dir.file("missing-idx1-ubyte.gz");
  CHECK_THROWS_MATCHES(read_idx(missing), InvalidArgument,
                       MessageIs("read_idx: cannot open '" + missing +
                                 "': No such file or directory, expected a readable IDX file (gzip or plain)"));
  CHECK_THROWS_MATCHES(read_idx(dir.path().string()), InvalidArgument,
                       MessageIs("read_idx: '" + dir.path().string() + "' is a directory, expected an IDX file"));
  const std::string tiny = dir.file("tiny");
  write_file(tiny, {0, 0, 8});
  CHECK_THROWS_MATCHES(read_idx(tiny), InvalidArgument,
                       MessageIs("read_idx: '" + tiny +
                                 "': the file has 3 bytes, expected at least 4 (the magic number), is it an IDX file?"));
  CHECK_THROWS_MATCHES(read_idx(tiny, "load_fashion_mnist"), InvalidArgument,
                       MessageContains("load_fashion_mnist: '" + tiny + "': the file has 3 bytes"));
}

TEST_CASE("read_idx refuses a magic number of another format, element type or rank", "[data][idx]") {
  const auto magic = GENERATE(std::vector<std::uint8_t>{0x12, 0x34, 0x56, 0x78},   // not IDX
                              std::vector<std::uint8_t>{0x00, 0x00, 0x09, 0x01},   // signed bytes
                              std::vector<std::uint8_t>{0x00, 0x00, 0x0D, 0x03},   // float32
                              std::vector<std::uint8_t>{0x00, 0x00, 0x08, 0x00},   // rank 0
                              std::vector<std::uint8_t>{0x00, 0x00, 0x08, 0x06});  // rank 6
  const bool gzip = GENERATE(false, true);
  char hex[16];
  std::snprintf(hex, sizeof hex, "0x%02X%02X%02X%02X", magic[0], magic[1], magic[2], magic[3]);
  CAPTURE(hex, gzip);
  const TempDir dir;
  const std::string path = dir.file("bad");
  std::vector<std::uint8_t> bytes = magic;
  bytes.insert(bytes.end(), 16, 0);
  write_idx_file(path, bytes, gzip);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs("read_idx: '" + path + "': magic number " + hex +
                                 ", expected 0x00000801 (labels), 0x00000803 (images) or another IDX file of unsigned "
                                 "bytes (0x000008NN, 1 <= NN <= 5 dimensions)"));
}

TEST_CASE("read_idx refuses truncated dimensions and data, and trailing bytes, naming the path", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  const TempDir dir;
  const std::string path = dir.file("bad");
  const std::string where = "read_idx: '" + path + "': ";

  auto header_cut = idx_bytes({2, 3, 4}, {});
  header_cut.resize(10);  // magic and 1.5 of 3 dimensions
  write_idx_file(path, header_cut, gzip);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs(where + "the header ends after 10 bytes, expected 16 (the magic number and 3 "
                                         "dimensions), is it truncated?"));

  write_idx_file(path, idx_bytes({2, 3, 4}, iota_bytes(23)), gzip);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs(where + "the data ends after 23 bytes, expected 24 (dimensions 2 x 3 x 4), is the "
                                         "file truncated?"));

  write_idx_file(path, idx_bytes({2, 3, 4}, iota_bytes(27)), gzip);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs(where + "3 bytes follow the 24 bytes of data (dimensions 2 x 3 x 4), expected the file "
                                         "to end there"));

  // A header that claims far more than the file holds fails as truncated
  // (reading chunk by chunk, not allocating the claim).
  write_idx_file(path, idx_bytes({60000, 28, 28}, iota_bytes(100)), gzip);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs(where + "the data ends after 100 bytes, expected 47040000 (dimensions 60000 x 28 x "
                                         "28), is the file truncated?"));
  write_idx_file(path, idx_bytes({0xFFFFFFFF, 0xFFFFFFFF, 2}, {}), gzip);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs(where + "dimensions 4294967295 x 4294967295 x 2 exceed 2^40 elements, expected an IDX "
                                         "file of a realistic size"));
}

TEST_CASE("read_idx refuses a gzip stream that is cut short or corrupt", "[data][idx]") {
  const TempDir dir;
  const std::string path = dir.file("labels.gz");
  // Incompressible content, so that the compressed stream is long enough to cut.
  std::vector<std::uint8_t> labels(4000);
  std::uint32_t x = 12345;
  for (auto& b : labels) b = static_cast<std::uint8_t>((x = x * 1103515245U + 12345U) >> 24);
  write_gzip_file(path, idx_bytes({4000}, labels));
  const auto whole = read_file(path);
  REQUIRE(read_idx(path).bytes == labels);

  auto cut = whole;
  cut.resize(whole.size() / 2);
  write_file(path, cut);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs("read_idx: '" + path + "': the gzip stream cannot be decompressed (zlib: unexpected end "
                                 "of file), expected a complete gzip file, is it truncated or corrupt?"));

  auto corrupt = whole;
  corrupt[corrupt.size() - 6] ^= 0xFF;  // the CRC-32 of the content
  write_file(path, corrupt);
  CHECK_THROWS_MATCHES(read_idx(path), InvalidArgument,
                       MessageIs("read_idx: '" + path + "': the gzip stream cannot be decompressed (zlib: incorrect data "
                                 "check), expected a complete gzip file, is it truncated or corrupt?"));
}
