// IDX files through zlib's gz* interface, which reads gzip streams and,
// transparently, plain files.

#include "syncbn/data/idx.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <system_error>

#include "gz_file.hpp"
#include "syncbn/error.hpp"

namespace syncbn::data {
namespace {

constexpr int kMaxDims = 5;
// Reads grow the array by at most this much at a time, so memory follows
// the data actually present, not what a header claims.
constexpr std::size_t kChunk = std::size_t{1} << 20;

class Reader {
 public:
  Reader(const std::string& path, const char* op) : path_(path), op_(op) {
    std::error_code ec;
    SYNCBN_CHECK(!std::filesystem::is_directory(path, ec), op, ": '", path, "' is a directory, expected an IDX file");
    file_.reset(gzopen(path.c_str(), "rb"));
    if (!file_) {
      const int error = errno;
      SYNCBN_THROW(InvalidArgument, op, ": cannot open '", path, "': ",
                   error != 0 ? std::error_code(error, std::generic_category()).message()
                              : std::string("zlib could not allocate its state"),
                   ", expected a readable IDX file (gzip or plain)");
    }
    gzbuffer(file_.get(), 1 << 17);
  }

  // Reads up to n bytes into `out`; returns how many (fewer only at the end
  // of the data).
  std::size_t read(std::uint8_t* out, std::size_t n) {
    std::size_t done = 0;
    while (done < n) {
      const auto want = static_cast<unsigned>(std::min(n - done, kChunk));
      const int got = gzread(file_.get(), out + done, want);
      if (got < 0) throw_stream_error();
      if (got == 0) break;
      done += static_cast<std::size_t>(got);
    }
    // zlib returns what it decompressed before a stream that ends early;
    // the error state says why the data stopped.
    if (done < n) check_stream();
    return done;
  }

  // The bytes left in the file (read and counted, a chunk at a time).
  std::uint64_t count_rest() {
    std::vector<std::uint8_t> chunk(4096);
    std::uint64_t total = 0;
    for (;;) {
      const std::size_t got = read(chunk.data(), chunk.size());
      total += got;
      if (got < chunk.size()) return total;
    }
  }

  std::string where() const { return std::string(op_) + ": '" + path_ + "': "; }

 private:
  void check_stream() {
    int code = Z_OK;
    gzerror(file_.get(), &code);
    if (code != Z_OK && code != Z_STREAM_END) throw_stream_error();
  }

  [[noreturn]] void throw_stream_error() {
    int code = Z_OK;
    std::string text = gzerror(file_.get(), &code);
    if (code == Z_ERRNO)
      SYNCBN_THROW(Error, op_, ": cannot read '", path_, "': ", std::error_code(errno, std::generic_category()).message());
    // zlib starts its message with the path, which ours names already.
    if (const std::string prefix = path_ + ": "; text.starts_with(prefix)) text.erase(0, prefix.size());
    SYNCBN_THROW(InvalidArgument, where(), "the gzip stream cannot be decompressed (zlib: ", text,
                 "), expected a complete gzip file, is it truncated or corrupt?");
  }

  std::string path_;
  const char* op_;
  detail::GzFile file_;
};

std::string dims_text(const std::vector<std::int64_t>& dims) {
  std::ostringstream out;
  for (std::size_t i = 0; i < dims.size(); ++i) out << (i == 0 ? "" : " x ") << dims[i];
  return out.str();
}

}  // namespace

IdxArray read_idx(const std::string& path, const char* op) {
  Reader reader(path, op);
  std::uint8_t magic[4];
  const std::size_t magic_bytes = reader.read(magic, 4);
  SYNCBN_CHECK(magic_bytes == 4, reader.where(), "the file has ", magic_bytes,
               " bytes, expected at least 4 (the magic number), is it an IDX file?");
  const unsigned value = (unsigned{magic[0]} << 24) | (unsigned{magic[1]} << 16) | (unsigned{magic[2]} << 8) | magic[3];
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] < 1 || magic[3] > kMaxDims) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08X", value);
    SYNCBN_THROW(InvalidArgument, reader.where(), "magic number ", hex,
                 ", expected 0x00000801 (labels), 0x00000803 (images) or another IDX file of unsigned bytes "
                 "(0x000008NN, 1 <= NN <= ", kMaxDims, " dimensions)");
  }

  IdxArray out;
  const int ndims = magic[3];
  std::uint8_t dim_bytes[4 * kMaxDims];
  const std::size_t dims_read = reader.read(dim_bytes, 4 * static_cast<std::size_t>(ndims));
  SYNCBN_CHECK(dims_read == 4 * static_cast<std::size_t>(ndims), reader.where(), "the header ends after ", 4 + dims_read,
               " bytes, expected ", 4 + 4 * ndims, " (the magic number and ", ndims, " dimensions), is it truncated?");
  for (int i = 0; i < ndims; ++i) {
    const std::uint8_t* b = dim_bytes + 4 * i;
    out.dims.push_back((std::int64_t{b[0]} << 24) | (std::int64_t{b[1]} << 16) | (std::int64_t{b[2]} << 8) | b[3]);
  }
  // Five 32-bit dimensions can overflow 64 bits: bound the product first.
  constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 40;
  std::uint64_t count = 1;
  if (std::find(out.dims.begin(), out.dims.end(), 0) != out.dims.end()) {
    count = 0;
  } else {
    for (const std::int64_t d : out.dims) {
      const auto dim = static_cast<std::uint64_t>(d);
      SYNCBN_CHECK(count <= kMaxElements / dim, reader.where(), "dimensions ", dims_text(out.dims),
                   " exceed 2^40 elements, expected an IDX file of a realistic size");
      count *= dim;
    }
  }

  const std::size_t expected = static_cast<std::size_t>(count);
  std::size_t have = 0;
  while (have < expected) {
    const std::size_t step = std::min(expected - have, kChunk);
    out.bytes.resize(have + step);
    const std::size_t got = reader.read(out.bytes.data() + have, step);
    have += got;
    if (got < step) break;
  }
  SYNCBN_CHECK(have == expected, reader.where(), "the data ends after ", have, " bytes, expected ", expected,
               " (dimensions ", dims_text(out.dims), "), is the file truncated?");
  const std::uint64_t rest = reader.count_rest();
  SYNCBN_CHECK(rest == 0, reader.where(), rest, " bytes follow the ", expected, " bytes of data (dimensions ",
               dims_text(out.dims), "), expected the file to end there");
  return out;
}

}  // namespace syncbn::data
