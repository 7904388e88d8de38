#pragma once
// The batch-norm layer of a given input layout, per-replica or synchronized.

#include <cstdint>
#include <memory>

#include "syncbn/nn/sync_batch_norm.hpp"
#include "syncbn/core/shape.hpp"

namespace syncbn::testing {

/// 1 for (N, C) and (N, C, L) input, 2 for (N, C, H, W), 3 for (N, C, D, H, W).
inline int spatial_dims_of(const Shape& s) { return s.rank() <= 3 ? 1 : s.rank() - 2; }

/// L: the product of the dimensions after N and C (1 for (N, C) input).
inline std::int64_t spatial_size(const Shape& s) {
  std::int64_t l = 1;
  for (int i = 2; i < s.rank(); ++i) l *= s[i];
  return l;
}

/// BatchNorm{dims}d, or SyncBatchNorm{dims}d when `sync`.
inline std::shared_ptr<nn::BatchNorm> make_batchnorm(bool sync, int dims, std::int64_t c,
                                                     const nn::BatchNormOptions& options = {}) {
  if (sync) {
    if (dims == 1) return std::make_shared<nn::SyncBatchNorm1d>(c, options);
    if (dims == 2) return std::make_shared<nn::SyncBatchNorm2d>(c, options);
    return std::make_shared<nn::SyncBatchNorm3d>(c, options);
  }
  if (dims == 1) return std::make_shared<nn::BatchNorm1d>(c, options);
  if (dims == 2) return std::make_shared<nn::BatchNorm2d>(c, options);
  return std::make_shared<nn::BatchNorm3d>(c, options);
}

}  // namespace syncbn::testing
