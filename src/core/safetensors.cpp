// safetensors files: the writer (temporary file, then rename) and the reader
// (the whole header validated before any tensor is allocated).

#include "syncbn/core/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string_view>
#include <system_error>

#include <nlohmann/json.hpp>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "syncbn/error.hpp"

namespace syncbn::core {
namespace {

// ordered_json keeps the header's key order, which decides the order of
// tensors that share a data offset (empty ones) and the order save writes.
using Json = nlohmann::ordered_json;

// The reference implementation refuses larger headers; so do we, before
// allocating anything for one.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kDtypeCodes = "F64, F32, F16, BF16, I64";

const char* dtype_code(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::Float16: return "F16";
    case DType::BFloat16: return "BF16";
    case DType::Int64: return "I64";
  }
  return "?";
}

bool parse_dtype_code(std::string_view code, DType& out) {
  for (DType d : {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16, DType::Int64}) {
    if (code == dtype_code(d)) {
      out = d;
      return true;
    }
  }
  return false;
}

std::string errno_text(int error) { return std::error_code(error, std::generic_category()).message(); }

// safetensors is little-endian and syncbn keeps elements in host order; a
// big-endian host would need a byte swap per element, which nothing tests.
void check_little_endian(const char* op) {
  if constexpr (std::endian::native != std::endian::little)
    SYNCBN_THROW(Unsupported, op, ": safetensors files are little-endian, expected a little-endian host");
}

struct FileCloser {
  void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// Removes the temporary file unless the write was committed (renamed).
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  ~TempFileGuard() {
    if (!committed_) {
      std::error_code ignored;
      std::filesystem::remove(path_, ignored);
    }
  }
  void commit() noexcept { committed_ = true; }

 private:
  std::string path_;
  bool committed_ = false;
};

// A string as JSON, or InvalidArgument naming what it is when it is not
// valid UTF-8 (JSON text must be).
std::string json_string(const std::string& text, const std::string& what, const char* op) {
  try {
    return Json(text).dump();
  } catch (const Json::type_error&) {
    SYNCBN_THROW(InvalidArgument, op, ": ", what, " is not valid UTF-8, expected UTF-8 text (JSON requires it)");
  }
}

std::string header_json(const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata, const char* op) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [key, value] : metadata) {
      json_string(key, "metadata key '" + key + "'", op);
      json_string(value, "the value of metadata key '" + key + "'", op);
      meta[key] = value;
    }
    header[kMetadataKey] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const auto nbytes = static_cast<std::uint64_t>(t.nbytes());
    Json entry = Json::object();
    entry["dtype"] = dtype_code(t.dtype());
    entry["shape"] = t.shape().dims();
    entry["data_offsets"] = {offset, offset + nbytes};
    header[name] = std::move(entry);
    offset += nbytes;
  }
  std::string text = header.dump();
  // Pad so that the buffer starts 8-byte aligned, as the reference
  // implementation writes it (JSON allows trailing whitespace).
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void check_names(const std::vector<std::pair<std::string, Tensor>>& tensors, const char* op) {
  std::set<std::string_view> seen;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    SYNCBN_CHECK(!name.empty(), op, ": tensor ", i, " has an empty name, expected a non-empty name");
    SYNCBN_CHECK(name != kMetadataKey, op, ": tensor ", i, " is named '", kMetadataKey,
                 "', expected another name (the format reserves it for the metadata)");
    SYNCBN_CHECK(seen.insert(name).second, op, ": the name '", name, "' is given twice, expected distinct names");
    SYNCBN_CHECK(t.defined(), op, ": tensor '", name, "' is undefined, expected a tensor with storage");
    json_string(name, "the name of tensor " + std::to_string(i), op);
  }
}

void write_bytes(std::FILE* f, const void* data, std::size_t n, const std::string& tmp, const char* op) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f) != n)
    SYNCBN_THROW(Error, op, ": cannot write '", tmp, "': ", errno_text(errno));
}

}  // namespace

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata, const char* op) {
  check_little_endian(op);
  check_names(tensors, op);
  const std::string header = header_json(tensors, metadata, op);

  const std::string tmp = path + ".tmp";
  TempFileGuard guard(tmp);
  File file(std::fopen(tmp.c_str(), "wb"));
  if (!file) SYNCBN_THROW(Error, op, ": cannot create '", tmp, "' (written, then renamed to '", path, "'): ",
                          errno_text(errno));
  std::uint8_t size_bytes[8];
  for (int i = 0; i < 8; ++i) size_bytes[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
  write_bytes(file.get(), size_bytes, sizeof size_bytes, tmp, op);
  write_bytes(file.get(), header.data(), header.size(), tmp, op);
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    // One tensor at a time on the host: a model on a GPU never needs a
    // second copy of itself in host memory.
    const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
    write_bytes(file.get(), host.raw_data(), host.nbytes(), tmp, op);
  }
  if (std::fflush(file.get()) != 0) SYNCBN_THROW(Error, op, ": cannot write '", tmp, "': ", errno_text(errno));
#if defined(__unix__) || defined(__APPLE__)
  // On disk before the rename, so that a crash cannot leave `path` naming an
  // empty or partial file.
  if (::fsync(fileno(file.get())) != 0) SYNCBN_THROW(Error, op, ": cannot write '", tmp, "': ", errno_text(errno));
#endif
  if (std::fclose(file.release()) != 0) SYNCBN_THROW(Error, op, ": cannot write '", tmp, "': ", errno_text(errno));
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) SYNCBN_THROW(Error, op, ": cannot rename '", tmp, "' to '", path, "': ", ec.message());
  guard.commit();
}

namespace {

struct Entry {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<std::int64_t> dims;
  std::uint64_t begin = 0, end = 0;
};

// One header entry, validated: `where` is "op: 'path': ".
Entry parse_entry(const std::string& name, const Json& value, const std::string& where) {
  const std::string what = "tensor '" + name + "'";
  SYNCBN_CHECK(value.is_object(), where, what, " is ", value.type_name(),
               ", expected an object with dtype, shape and data_offsets");
  Entry e;
  e.name = name;
  const auto dtype = value.find("dtype");
  SYNCBN_CHECK(dtype != value.end() && dtype->is_string(), where, what,
               dtype == value.end() ? std::string(" has no dtype") : std::string(" has a dtype that is not a string"),
               ", expected one of ", kDtypeCodes);
  SYNCBN_CHECK(parse_dtype_code(dtype->get_ref<const std::string&>(), e.dtype), where, what, " has dtype ",
               dtype->dump(), ", expected one of ", kDtypeCodes, " (the dtypes syncbn has)");

  const auto shape = value.find("shape");
  SYNCBN_CHECK(shape != value.end() && shape->is_array(), where, what,
               shape == value.end() ? std::string(" has no shape") : " has shape " + shape->dump(),
               ", expected an array of dimensions");
  SYNCBN_CHECK(shape->size() <= static_cast<std::size_t>(Shape::kMaxRank), where, what, " has rank ", shape->size(),
               ", expected at most ", Shape::kMaxRank);
  // Bytes of the tensor, refusing shapes whose size overflows.
  std::uint64_t nbytes = dtype_size(e.dtype);
  bool overflow = false;
  for (const auto& d : *shape) {
    SYNCBN_CHECK(d.is_number_integer() && (d.is_number_unsigned() || d.get<std::int64_t>() >= 0), where, what,
                 " has shape ", shape->dump(), ", expected non-negative integer dimensions");
    const std::uint64_t dim = d.get<std::uint64_t>();
    SYNCBN_CHECK(dim <= static_cast<std::uint64_t>(INT64_MAX), where, what, " has shape ", shape->dump(),
                 ", expected dimensions that fit int64");
    e.dims.push_back(static_cast<std::int64_t>(dim));
    if (dim != 0 && nbytes > static_cast<std::uint64_t>(INT64_MAX) / dim) overflow = true;
    nbytes *= dim;
  }
  const bool empty = std::find(e.dims.begin(), e.dims.end(), 0) != e.dims.end();
  if (empty) nbytes = 0;
  SYNCBN_CHECK(empty || !overflow, where, what, " has shape ", shape->dump(), " of ", dtype_name(e.dtype),
               ", expected a tensor whose size in bytes fits int64");

  const auto offsets = value.find("data_offsets");
  const bool offsets_ok = offsets != value.end() && offsets->is_array() && offsets->size() == 2 &&
                          (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned();
  SYNCBN_CHECK(offsets_ok, where, what,
               offsets == value.end() ? std::string(" has no data_offsets") : " has data_offsets " + offsets->dump(),
               ", expected [begin, end] (two non-negative integers)");
  e.begin = (*offsets)[0].get<std::uint64_t>();
  e.end = (*offsets)[1].get<std::uint64_t>();
  SYNCBN_CHECK(e.begin <= e.end, where, what, " has data_offsets ", offsets->dump(), ", expected begin <= end");
  SYNCBN_CHECK(e.end - e.begin == nbytes, where, what, " has shape ", shape->dump(), " of ", dtype_name(e.dtype),
               " (", nbytes, " bytes) but data_offsets ", offsets->dump(), " (", e.end - e.begin,
               " bytes), expected the same size");
  return e;
}

std::map<std::string, std::string> parse_metadata(const Json& value, const std::string& where) {
  SYNCBN_CHECK(value.is_object(), where, kMetadataKey, " is ", value.type_name(), ", expected an object of strings");
  std::map<std::string, std::string> out;
  for (const auto& [key, v] : value.items()) {
    SYNCBN_CHECK(v.is_string(), where, kMetadataKey, " entry '", key, "' is ", v.dump(), ", expected a string");
    out.emplace(key, v.get<std::string>());
  }
  return out;
}

}  // namespace

SafetensorsFile load_safetensors(const std::string& path, const char* op) {
  check_little_endian(op);
  const std::string where = std::string(op) + ": '" + path + "': ";
  std::error_code ec;
  SYNCBN_CHECK(!std::filesystem::is_directory(path, ec), where, "is a directory, expected a safetensors file");
  File file(std::fopen(path.c_str(), "rb"));
  SYNCBN_CHECK(file != nullptr, op, ": cannot open '", path, "': ", errno_text(errno),
               ", expected a readable safetensors file");
  const auto file_size = std::filesystem::file_size(path, ec);
  SYNCBN_CHECK(!ec, op, ": cannot read the size of '", path, "': ", ec.message());

  SYNCBN_CHECK(file_size >= 8, where, "the file has ", file_size,
               " bytes, expected at least 8 (the header size), is it a safetensors file?");
  std::uint8_t size_bytes[8];
  if (std::fread(size_bytes, 1, 8, file.get()) != 8)
    SYNCBN_THROW(Error, op, ": cannot read '", path, "': ", errno_text(errno));
  std::uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<std::uint64_t>(size_bytes[i]) << (8 * i);
  SYNCBN_CHECK(header_size <= kMaxHeaderBytes, where, "header size ", header_size, " bytes, expected at most ",
               kMaxHeaderBytes, ", is it a safetensors file?");
  SYNCBN_CHECK(header_size <= file_size - 8, where, "header size ", header_size, " bytes, expected at most ",
               file_size - 8, " (the bytes after the header size), is the file truncated?");

  std::string header(static_cast<std::size_t>(header_size), '\0');
  if (std::fread(header.data(), 1, header.size(), file.get()) != header.size())
    SYNCBN_THROW(Error, op, ": cannot read '", path, "': ", errno_text(errno));
  // The JSON parser keeps the last of two equal keys; a name given twice is
  // an error, so the keys of the top-level object are collected as parsed.
  std::set<std::string> names;
  std::string duplicate;
  const auto note_keys = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth == 1 && event == Json::parse_event_t::key && !names.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  Json json;
  try {
    json = Json::parse(header, note_keys);
  } catch (const Json::exception& e) {
    SYNCBN_THROW(InvalidArgument, where, "the header is not valid JSON (", e.what(),
                 "), expected a safetensors header");
  }
  SYNCBN_CHECK(json.is_object(), where, "the header is a JSON ", json.type_name(),
               ", expected an object (a safetensors header)");
  SYNCBN_CHECK(duplicate.empty(), where, "the header names '", duplicate, "' twice, expected distinct names");

  SafetensorsFile out;
  std::vector<Entry> entries;
  for (const auto& [key, value] : json.items()) {
    if (key == kMetadataKey)
      out.metadata = parse_metadata(value, where);
    else
      entries.push_back(parse_entry(key, value, where));
  }
  // File order is data order; stable, so that empty tensors sharing an
  // offset keep their header order.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const std::uint64_t buffer_size = file_size - 8 - header_size;
  std::uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    SYNCBN_CHECK(e.end <= buffer_size, where, "tensor '", e.name, "' has data_offsets [", e.begin, ", ", e.end,
                 "], expected them within the data buffer of ", buffer_size, " bytes, is the file truncated?");
    SYNCBN_CHECK(e.begin >= covered, where, "tensor '", e.name, "' has data_offsets [", e.begin, ", ", e.end,
                 "] which overlap tensor '", previous != nullptr ? previous->name : std::string(), "' (ending at ",
                 covered, "), expected tensors that do not overlap");
    SYNCBN_CHECK(e.begin == covered, where, "bytes [", covered, ", ", e.begin, ") of the data buffer belong to no tensor (tensor '",
                 e.name, "' starts at ", e.begin, "), expected tensors that cover the buffer without holes");
    covered = e.end;
    previous = &e;
  }
  SYNCBN_CHECK(covered == buffer_size, where, "bytes [", covered, ", ", buffer_size,
               ") at the end of the data buffer belong to no tensor, expected tensors that cover the buffer "
               "exactly");

  // Only now, with every size known to match the file, allocate and read.
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(Shape(e.dims), e.dtype, Device::cpu());
    if (t.nbytes() > 0 && std::fread(t.raw_data(), 1, t.nbytes(), file.get()) != t.nbytes())
      SYNCBN_THROW(Error, op, ": cannot read tensor '", e.name, "' of '", path, "': ",
                   std::ferror(file.get()) ? errno_text(errno) : std::string("the file ended early (did it change?)"));
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace syncbn::core
