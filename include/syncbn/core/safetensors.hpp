#pragma once
// Tensor files in the safetensors format (the format of Hugging Face's
// safetensors library, which PyTorch users exchange weights in).
//
// The format: an 8-byte little-endian unsigned header size N; N bytes of
// UTF-8 JSON mapping each tensor's name to {"dtype", "shape",
// "data_offsets": [begin, end]} plus an optional "__metadata__" object of
// string values; then the byte buffer, in which each tensor's elements
// (row-major, little-endian) occupy [begin, end). The tensors cover the buffer
// exactly, without holes or overlaps.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "syncbn/core/tensor.hpp"

namespace syncbn::core {

/// Writes `tensors` (in the given order) and `metadata` to `path` as a
/// safetensors file. Tensors may live on any device (they are copied to the
/// host one at a time) and have any dtype (float32 "F32", float64 "F64",
/// float16 "F16", bfloat16 "BF16", int64 "I64"). The header is compact JSON,
/// "__metadata__" first (omitted when `metadata` is empty), then the tensors
/// in order, padded with spaces to a multiple of 8 bytes as the reference
/// implementation does; the tensors are packed in the given order.
///
/// The file is written to `path + ".tmp"` and renamed onto `path` once
/// complete, so `path` holds either its old contents or the whole new file,
/// never a partial one; on failure the temporary file is removed.
///
/// Throws InvalidArgument (before writing anything) for an empty name, the
/// name "__metadata__", a name given twice, or an undefined tensor; Error
/// when the file cannot be written (the message names the path and the
/// system's reason). Errors start with `op` (a caller passes its own entry
/// point). Blocks until the file is written; safe to call from several
/// threads for distinct paths.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {}, const char* op = "save_safetensors");

/// The contents of a safetensors file.
struct SafetensorsFile {
  /// The tensors, on the CPU (cpu:0), in file order (by data offset).
  std::vector<std::pair<std::string, Tensor>> tensors;
  /// The "__metadata__" entries (empty when the file has none).
  std::map<std::string, std::string> metadata;
};

/// Reads the safetensors file at `path`. The whole header is validated before
/// any tensor is allocated: InvalidArgument, naming the path and what is
/// wrong, for a file that does not exist or cannot be opened (with the
/// system's reason), one shorter than 8 bytes, a header size beyond the file
/// or above 100 MB (the reference implementation's limit), a header that is
/// not a JSON object, an entry without a string dtype, an array shape of
/// non-negative integers (rank <= Shape::kMaxRank) or two data offsets
/// begin <= end, a dtype other than F64, F32, F16, BF16 and I64, a shape whose
/// bytes differ from end - begin, offsets that leave a hole, overlap or do
/// not end exactly at the end of the file, a name given twice, or metadata
/// that is not an object of strings. Error for a read that fails midway.
/// Errors start with `op`. Entries may carry fields besides the three
/// (ignored, as the reference implementation does).
SafetensorsFile load_safetensors(const std::string& path, const char* op = "load_safetensors");

}  // namespace syncbn::core
