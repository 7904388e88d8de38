#pragma once
// IDX files written by the tests, plain or gzip-compressed (zlib), to check
// the readers against the format rather than against themselves.

#include <zlib.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/temp_dir.hpp"

namespace syncbn::testing {

/// The bytes of an IDX file of unsigned bytes: magic 0x000008NN, the
/// dimensions big-endian, then `data` (which may be made shorter or longer
/// than the dimensions say).
inline std::vector<std::uint8_t> idx_bytes(const std::vector<std::uint32_t>& dims, const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> out{0, 0, 0x08, static_cast<std::uint8_t>(dims.size())};
  for (const std::uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(d >> shift));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

/// Writes `bytes` to `path` as a gzip file.
inline void write_gzip_file(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("write_gzip_file: cannot create " + path);
  const int written = bytes.empty() ? 0 : gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  const int closed = gzclose(f);
  if (written != static_cast<int>(bytes.size()) || closed != Z_OK)
    throw std::runtime_error("write_gzip_file: cannot write " + path);
}

/// Writes `bytes` to `path`, gzip-compressed or plain.
inline void write_idx_file(const std::string& path, const std::vector<std::uint8_t>& bytes, bool gzip) {
  if (gzip)
    write_gzip_file(path, bytes);
  else
    write_file(path, bytes);
}

}  // namespace syncbn::testing
