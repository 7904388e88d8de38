#pragma once
// Cross-device collectives: scatter, gather, coalesced reduce-add and
// coalesced broadcast, on logical CPU devices and GPUs.

#include <cstdint>
#include <vector>

#include "syncbn/core/device.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/core/tensor.hpp"

namespace syncbn::comm {

/// How a reduction or broadcast moves data between GPUs.
enum class Transport : std::uint8_t {
  /// NCCL where every participant is a distinct GPU and NCCL was built,
  /// copies otherwise.
  Auto,
  /// Copies (peer copies between GPUs) and a float64 sum in replica order:
  /// bit-reproducible, and what the batch-norm statistics use.
  Copy,
};

/// Sizes of `parts` chunks of `n` rows that differ by at most one, the larger
/// first: 10 rows in 4 parts -> {3, 3, 2, 2}; 2 rows in 4 parts -> {1, 1, 0, 0}.
std::vector<std::int64_t> even_chunk_sizes(std::int64_t n, int parts);

/// Splits `input` along dimension 0 into one chunk per device (even_chunk_sizes
/// unless `chunk_sizes` is given; zero-length chunks are allowed). A chunk on
/// the input's own memory (the same GPU, or any CPU device for a CPU input)
/// is a zero-copy view; others are copies.
/// Throws InvalidArgument for a scalar input, no devices, a chunk_sizes list
/// of another length, negative sizes, or sizes that do not sum to size(0).
std::vector<Tensor> scatter(const Tensor& input, const std::vector<Device>& devices,
                            const std::vector<std::int64_t>& chunk_sizes = {});

/// Concatenates `tensors` along dimension 0 into a new tensor on `device`
/// (same dtype and trailing dimensions; zero-length chunks allowed).
Tensor gather(const std::vector<Tensor>& tensors, Device device);

/// Element-wise sums of per-replica groups (1 to core::kMaxReplicas groups): groups[k] holds replica k's
/// tensors (all on one device); returns out[j] = groups[0][j] + groups[1][j]
/// + ... on `target`. With Transport::Copy the sum is accumulated in float64
/// in group order (deterministic); each group is first packed into one
/// buffer on its own device and moved with one copy. Tensor j must have the
/// same shape and floating dtype (float32/float64) in every group.
std::vector<Tensor> reduce_add_coalesced(const std::vector<std::vector<Tensor>>& groups, Device target,
                                         Transport transport = Transport::Auto);

/// Copies of `tensors` (all on one device, any dtype) on every device:
/// out[d][j] lives on devices[d]. Every copy has its own storage, also on
/// the source device; per device, the copies are views of one buffer.
std::vector<std::vector<Tensor>> broadcast_coalesced(const std::vector<Tensor>& tensors,
                                                     const std::vector<Device>& devices,
                                                     Transport transport = Transport::Auto);

}  // namespace syncbn::comm
