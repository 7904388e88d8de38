// safetensors files: round trips of every dtype, the byte layout of the
// format, files written by other writers, and every malformed file.
// Device-generic: also runs on cuda:0 in the CUDA test binary.

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "support/device_under_test.hpp"
#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "support/temp_dir.hpp"
#include "syncbn/core/safetensors.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using core::load_safetensors;
using core::save_safetensors;
using syncbn::testing::MessageContains;
using syncbn::testing::MessageIs;
using syncbn::testing::read_file;
using syncbn::testing::TempDir;
using syncbn::testing::test_device;
using syncbn::testing::write_file;

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes host_bytes(const Tensor& t) {
  const Tensor host = t.to(Device::cpu());
  const auto* p = static_cast<const std::uint8_t*>(host.raw_data());
  return p == nullptr ? Bytes{} : Bytes(p, p + host.nbytes());
}

// A safetensors file from its header text and data buffer, as another
// writer would produce it.
Bytes file_bytes(const std::string& header, const Bytes& buffer) {
  Bytes out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(header.size()) >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), buffer.begin(), buffer.end());
  return out;
}

}  // namespace

TEST_CASE("save_safetensors and load_safetensors round-trip every dtype, shape and the metadata", "[core][io]") {
  CAPTURE(syncbn::testing::kSeed);
  const TempDir dir;
  const Device dev = test_device();
  const std::vector<std::pair<std::string, Tensor>> tensors{
      {"layer.weight", Tensor::randn(Shape{3, 4}, syncbn::testing::kSeed, DType::Float32, dev)},
      {"double", Tensor::randn(Shape{5}, syncbn::testing::kSeed + 1, DType::Float64, dev)},
      {"half", Tensor::randn(Shape{2, 3}, syncbn::testing::kSeed + 2, DType::Float16, dev)},
      {"brain", Tensor::randn(Shape{2, 2, 2}, syncbn::testing::kSeed + 3, DType::BFloat16, dev)},
      {"count", Tensor::from_vector(std::vector<std::int64_t>{-(1LL << 40) - 3}, Shape{}, dev)},
      {"empty", Tensor::zeros(Shape{0, 3}, DType::Float32, dev)},
      {"rank5", Tensor::rand(Shape{1, 2, 1, 2, 3}, syncbn::testing::kSeed + 4, DType::Float64, dev)},
      {"a", Tensor::from_vector(std::vector<std::int64_t>{1, 2, 3}, Shape{3}, dev)},  // names need not be sorted
  };
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"note", "gr\xc3\xbc\xc3\x9f" "e \xe2\x9c\x93"}};
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, tensors, metadata);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  const core::SafetensorsFile file = load_safetensors(path);
  CHECK(file.metadata == metadata);
  REQUIRE(file.tensors.size() == tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = file.tensors[i];
    INFO("tensor " << i << " '" << tensors[i].first << "'");
    CHECK(name == tensors[i].first);
    CHECK(t.dtype() == tensors[i].second.dtype());
    CHECK(t.shape() == tensors[i].second.shape());
    CHECK(t.device() == Device::cpu());
    CHECK(host_bytes(t) == host_bytes(tensors[i].second));
  }

  // No metadata: none read back; saving again replaces the file.
  save_safetensors(path, {tensors[0]});
  const auto again = load_safetensors(path);
  CHECK(again.metadata.empty());
  REQUIRE(again.tensors.size() == 1);
  CHECK(host_bytes(again.tensors[0].second) == host_bytes(tensors[0].second));
}

TEST_CASE("A small file has the byte layout of the safetensors format", "[core][io]") {
  const TempDir dir;
  const std::string path = dir.file("tiny.safetensors");
  save_safetensors(path,
                   {{"w", Tensor::from_vector(std::vector<float>{1.0f, -2.0f}, Shape{2}, test_device())},
                    {"n", Tensor::from_vector(std::vector<std::int64_t>{258}, Shape{}, test_device())}},
                   {{"format", "pt"}});
  // Compact JSON, metadata first, tensors in the given order, packed; the
  // header padded with spaces to a multiple of 8 bytes (138 -> 144).
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("n":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})";
  REQUIRE(header.size() == 138);
  const Bytes data{0x00, 0x00, 0x80, 0x3f,  0x00, 0x00, 0x00, 0xc0,    // 1.0f, -2.0f little-endian
                   0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};  // 258 as int64 little-endian
  const Bytes want = file_bytes(header + "      ", data);
  REQUIRE(want.size() == 8 + 144 + 16);
  CHECK(Bytes(want.begin(), want.begin() + 8) == Bytes{144, 0, 0, 0, 0, 0, 0, 0});
  CHECK(read_file(path) == want);
}

TEST_CASE("load_safetensors reads files as other writers lay them out", "[core][io]") {
  const TempDir dir;
  const std::string path = dir.file("other.safetensors");
  // Spaces (as Python's json.dumps writes), metadata last, the entries not
  // in data order, an empty tensor, no padding, and a field this reader
  // does not know.
  const std::string header =
      R"({"b": {"dtype": "F64", "shape": [1], "data_offsets": [4, 12]}, )"
      R"("e": {"data_offsets": [4, 4], "shape": [0, 2], "dtype": "BF16"}, )"
      R"("a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4], "extra": "ignored"}, )"
      R"("__metadata__": {"k": "v"}})";
  const Bytes buffer{0x00, 0x3c, 0x00, 0xc0,                              // 1.0, -2.0 as float16
                     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x40};  // 3.0 as float64
  write_file(path, file_bytes(header, buffer));
  const auto file = load_safetensors(path);
  CHECK(file.metadata == std::map<std::string, std::string>{{"k", "v"}});
  REQUIRE(file.tensors.size() == 3);
  CHECK(file.tensors[0].first == "a");
  CHECK(file.tensors[0].second.dtype() == DType::Float16);
  CHECK(file.tensors[0].second.to_vector<double>() == std::vector<double>{1.0, -2.0});
  CHECK(file.tensors[1].first == "e");
  CHECK(file.tensors[1].second.shape() == Shape{0, 2});
  CHECK(file.tensors[1].second.dtype() == DType::BFloat16);
  CHECK(file.tensors[2].first == "b");
  CHECK(file.tensors[2].second.to_vector<double>() == std::vector<double>{3.0});
}

TEST_CASE("load_safetensors reports a missing file, a directory and a short file with the path", "[core][io]") {
  const TempDir dir;
  const std::string missing = dir.file("missing.safetensors");
  CHECK_THROWS_MATCHES(load_safetensors(missing), InvalidArgument,
                       MessageIs("load_safetensors: cannot open '" + missing +
                                 "': No such file or directory, expected a readable safetensors file"));
  CHECK_THROWS_MATCHES(load_safetensors(dir.path().string()), InvalidArgument,
                       MessageIs("load_safetensors: '" + dir.path().string() +
                                 "': is a directory, expected a safetensors file"));
  const std::string shorter = dir.file("short.safetensors");
  write_file(shorter, {1, 2, 3, 4, 5});
  CHECK_THROWS_MATCHES(load_safetensors(shorter), InvalidArgument,
                       MessageIs("load_safetensors: '" + shorter +
                                 "': the file has 5 bytes, expected at least 8 (the header size), is it a safetensors file?"));
  // The caller's entry point starts the message.
  CHECK_THROWS_MATCHES(load_safetensors(shorter, "nn::load"), InvalidArgument,
                       MessageContains("nn::load: '" + shorter + "': the file has 5 bytes"));
}

TEST_CASE("load_safetensors refuses a header size beyond the file or above 100 MB", "[core][io]") {
  const TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  Bytes bytes{100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
  write_file(path, bytes);
  CHECK_THROWS_MATCHES(load_safetensors(path), InvalidArgument,
                       MessageIs("load_safetensors: '" + path +
                                 "': header size 100 bytes, expected at most 2 (the bytes after the header size), "
                                 "is the file truncated?"));
  bytes[0] = 0;
  bytes[5] = 1;  // 2^40
  write_file(path, bytes);
  CHECK_THROWS_MATCHES(load_safetensors(path), InvalidArgument,
                       MessageIs("load_safetensors: '" + path +
                                 "': header size 1099511627776 bytes, expected at most 100000000, is it a safetensors file?"));
}

namespace {

struct BadFile {
  const char* what;
  std::string header;
  std::size_t buffer_bytes;
  std::string message;  // after "load_safetensors: '<path>': "
};

}  // namespace

TEST_CASE("load_safetensors refuses every malformed header with a message naming the path and the fault", "[core][io]") {
  const auto bad = GENERATE(values<BadFile>({
      {"not JSON", R"({"a": )", 0, "the header is not valid JSON"},
      {"a JSON array", R"([1, 2])", 0, "the header is a JSON array, expected an object (a safetensors header)"},
      {"an entry that is no object", R"({"a": 3})", 0,
       "tensor 'a' is number, expected an object with dtype, shape and data_offsets"},
      {"no dtype", R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", 4,
       "tensor 'a' has no dtype, expected one of F64, F32, F16, BF16, I64"},
      {"an unknown dtype", R"({"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})", 4,
       "tensor 'a' has dtype \"I32\", expected one of F64, F32, F16, BF16, I64 (the dtypes syncbn has)"},
      {"no shape", R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", 4,
       "tensor 'a' has no shape, expected an array of dimensions"},
      {"a negative dimension", R"({"a": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 0]}})", 0,
       "tensor 'a' has shape [2,-1], expected non-negative integer dimensions"},
      {"a fractional dimension", R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4,
       "tensor 'a' has shape [1.5], expected non-negative integer dimensions"},
      {"rank 6", R"({"a": {"dtype": "F32", "shape": [1, 1, 1, 1, 1, 1], "data_offsets": [0, 4]}})", 4,
       "tensor 'a' has rank 6, expected at most 5"},
      {"a size that overflows", R"({"a": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})",
       8, "tensor 'a' has shape [4294967296,4294967296] of float64, expected a tensor whose size in bytes fits int64"},
      {"one offset", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4,
       "tensor 'a' has data_offsets [0], expected [begin, end] (two non-negative integers)"},
      {"begin after end", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8,
       "tensor 'a' has data_offsets [8,4], expected begin <= end"},
      {"a shape that does not match the offsets", R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})",
       20, "tensor 'a' has shape [2,3] of float32 (24 bytes) but data_offsets [0,20] (20 bytes), expected the same size"},
      {"offsets beyond the buffer", R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4,
       "tensor 'a' has data_offsets [0, 8], expected them within the data buffer of 4 bytes, is the file truncated?"},
      {"overlapping tensors",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12, "tensor 'b' has data_offsets [4, 12] which overlap tensor 'a' (ending at 8), expected tensors that do not overlap"},
      {"a hole",
       R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
       12, "bytes [4, 8) of the data buffer belong to no tensor (tensor 'b' starts at 8), expected tensors that cover the "
           "buffer without holes"},
      {"trailing bytes", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 6,
       "bytes [4, 6) at the end of the data buffer belong to no tensor, expected tensors that cover the buffer exactly"},
      {"a name given twice",
       R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
       8, "the header names 'a' twice, expected distinct names"},
      {"metadata that is no object", R"({"__metadata__": ["x"]})", 0,
       "__metadata__ is array, expected an object of strings"},
      {"a metadata value that is no string", R"({"__metadata__": {"k": 1}})", 0,
       "__metadata__ entry 'k' is 1, expected a string"},
  }));
  CAPTURE(bad.what);
  const TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  write_file(path, file_bytes(bad.header, Bytes(bad.buffer_bytes, 0)));
  CHECK_THROWS_MATCHES(load_safetensors(path), InvalidArgument,
                       MessageContains("load_safetensors: '" + path + "': " + bad.message));
}

TEST_CASE("save_safetensors refuses empty, reserved, repeated names and undefined tensors and writes nothing",
          "[core][io]") {
  const TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const Tensor t = Tensor::ones(Shape{2}, DType::Float32, test_device());
  save_safetensors(path, {{"kept", t}});
  const Bytes before = read_file(path);
  CHECK_THROWS_MATCHES(save_safetensors(path, {{"a", t}, {"", t}}), InvalidArgument,
                       MessageIs("save_safetensors: tensor 1 has an empty name, expected a non-empty name"));
  CHECK_THROWS_MATCHES(save_safetensors(path, {{"__metadata__", t}}), InvalidArgument,
                       MessageIs("save_safetensors: tensor 0 is named '__metadata__', expected another name (the format "
                                 "reserves it for the metadata)"));
  CHECK_THROWS_MATCHES(save_safetensors(path, {{"a", t}, {"b", t}, {"a", t}}), InvalidArgument,
                       MessageIs("save_safetensors: the name 'a' is given twice, expected distinct names"));
  CHECK_THROWS_MATCHES(save_safetensors(path, {{"a", Tensor()}}), InvalidArgument,
                       MessageIs("save_safetensors: tensor 'a' is undefined, expected a tensor with storage"));
  CHECK_THROWS_MATCHES(save_safetensors(path, {{"bad\xff", t}}), InvalidArgument,
                       MessageIs("save_safetensors: the name of tensor 0 is not valid UTF-8, expected UTF-8 text (JSON "
                                 "requires it)"));
  CHECK(read_file(path) == before);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST_CASE("A save that cannot be written or renamed names the path and leaves no partial file", "[core][io]") {
  const TempDir dir;
  const Tensor t = Tensor::ones(Shape{2}, DType::Float32, test_device());
  // No such directory.
  const std::string nowhere = dir.file("absent/model.safetensors");
  CHECK_THROWS_MATCHES(save_safetensors(nowhere, {{"a", t}}), Error,
                       MessageIs("save_safetensors: cannot create '" + nowhere + ".tmp' (written, then renamed to '" +
                                 nowhere + "'): No such file or directory"));
  // The temporary file cannot be created: the previous file stays intact.
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, {{"kept", t}});
  const Bytes before = read_file(path);
  std::filesystem::create_directory(path + ".tmp");
  CHECK_THROWS_MATCHES(save_safetensors(path, {{"new", t}}), Error, MessageContains("save_safetensors: cannot create '" + path + ".tmp'"));
  CHECK(read_file(path) == before);
  std::filesystem::remove(path + ".tmp");
  // The rename fails (the target is a non-empty directory): the temporary
  // file is removed.
  const std::string occupied = dir.file("occupied");
  std::filesystem::create_directories(occupied + "/inside");
  CHECK_THROWS_MATCHES(save_safetensors(occupied, {{"a", t}}), Error,
                       MessageContains("save_safetensors: cannot rename '" + occupied + ".tmp' to '" + occupied + "'"));
  CHECK_FALSE(std::filesystem::exists(occupied + ".tmp"));
  CHECK(std::filesystem::is_directory(occupied + "/inside"));
}
