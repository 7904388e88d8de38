#pragma once
// IDX files: the array format of the MNIST family of datasets.

#include <cstdint>
#include <string>
#include <vector>

namespace syncbn::data {

/// An array of unsigned bytes read from an IDX file.
struct IdxArray {
  /// The dimensions, outermost first (e.g. {60000, 28, 28} for images,
  /// {60000} for labels).
  std::vector<std::int64_t> dims;
  /// The elements, row-major; product(dims) of them.
  std::vector<std::uint8_t> bytes;
};

/// Reads the IDX file at `path`, gzip-compressed or plain (told apart by
/// content, not by name). The format: the magic number 0x000008NN (big-endian;
/// 0x08: unsigned bytes; NN: the number of dimensions, 1 to 5, e.g.
/// 0x00000801 for labels, 0x00000803 for images), NN big-endian 32-bit
/// dimensions, then the elements.
///
/// Throws InvalidArgument naming the path for a file that cannot be opened
/// (with the system's reason), a directory, a magic number of another type
/// or rank, data shorter than the dimensions say or longer (trailing
/// bytes), and a gzip stream that is corrupt or ends early; Error for a read
/// that fails in the system. Errors start with `op` (a caller passes its own
/// entry point). Reads incrementally: a header that claims more data than
/// the file holds fails without allocating for the claim.
IdxArray read_idx(const std::string& path, const char* op = "read_idx");

}  // namespace syncbn::data
