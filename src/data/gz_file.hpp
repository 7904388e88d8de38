#pragma once
// gzFile as a move-only RAII handle (closed once, on destruction).

#include <memory>

#include <zlib.h>

namespace syncbn::data::detail {

struct GzClose {
  void operator()(gzFile file) const noexcept { gzclose(file); }
};

/// An open gzip (or, transparently, plain) file; null when opening failed.
using GzFile = std::unique_ptr<gzFile_s, GzClose>;

}  // namespace syncbn::data::detail
