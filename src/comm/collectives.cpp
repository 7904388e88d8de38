// Cross-device collectives: argument checks, packing into coalesced buffers,
// and the copy transport. The NCCL transport lives in nccl_transport.cpp.

#include "syncbn/comm/collectives.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "nccl_transport.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/error.hpp"

namespace syncbn::comm {
namespace {

// Packs tensors (same dtype) into one new flat buffer on `device`.
Tensor pack_onto(const std::vector<Tensor>& tensors, const std::vector<std::size_t>& which, std::int64_t total,
                 Device device) {
  const Tensor& first = tensors[which.front()];
  Tensor flat = Tensor::empty(Shape{total}, first.dtype(), device);
  std::int64_t offset = 0;
  for (std::size_t j : which) {
    const Tensor& t = tensors[j];
    flat.view(offset, t.shape()).copy_(t);
    offset += t.numel();
  }
  return flat;
}

// Packs tensors (same device and dtype) into one new flat buffer on their device.
Tensor pack(const std::vector<Tensor>& tensors, const std::vector<std::size_t>& which, std::int64_t total) {
  return pack_onto(tensors, which, total, tensors[which.front()].device());
}

// Indices of tensors grouped by dtype, in first-appearance order.
std::vector<std::vector<std::size_t>> buckets_by_dtype(const std::vector<Tensor>& tensors) {
  std::vector<std::vector<std::size_t>> buckets;
  std::map<DType, std::size_t> slot;
  for (std::size_t j = 0; j < tensors.size(); ++j) {
    auto [it, added] = slot.emplace(tensors[j].dtype(), buckets.size());
    if (added) buckets.emplace_back();
    buckets[it->second].push_back(j);
  }
  return buckets;
}

std::int64_t total_numel(const std::vector<Tensor>& tensors, const std::vector<std::size_t>& which) {
  std::int64_t n = 0;
  for (std::size_t j : which) n += tensors[j].numel();
  return n;
}

// True when the devices are distinct GPUs (what NCCL needs).
bool distinct_gpus(const std::vector<Device>& devices) {
  std::set<int> seen;
  for (Device d : devices)
    if (!d.is_cuda() || !seen.insert(d.index()).second) return false;
  return devices.size() > 1;
}

void check_devices(const std::vector<Device>& devices, const char* op) {
  SYNCBN_CHECK(!devices.empty(), op, ": no devices, expected at least one");
  for (Device d : devices) d.check_available();
}

}  // namespace

std::vector<std::int64_t> even_chunk_sizes(std::int64_t n, int parts) {
  SYNCBN_CHECK(parts >= 1, "even_chunk_sizes: ", parts, " parts, expected at least 1");
  SYNCBN_CHECK(n >= 0, "even_chunk_sizes: ", n, " rows, expected >= 0");
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(parts), n / parts);
  for (std::int64_t i = 0; i < n % parts; ++i) ++sizes[static_cast<std::size_t>(i)];
  return sizes;
}

std::vector<Tensor> scatter(const Tensor& input, const std::vector<Device>& devices,
                            const std::vector<std::int64_t>& chunk_sizes) {
  SYNCBN_CHECK(input.defined(), "scatter: input is undefined, expected a tensor");
  SYNCBN_CHECK(input.rank() >= 1, "scatter: input is a scalar, expected rank >= 1");
  check_devices(devices, "scatter");
  std::vector<std::int64_t> sizes = chunk_sizes;
  if (sizes.empty()) {
    sizes = even_chunk_sizes(input.size(0), static_cast<int>(devices.size()));
  } else {
    SYNCBN_CHECK(sizes.size() == devices.size(), "scatter: ", sizes.size(), " chunk sizes, expected ", devices.size(),
                 " (one per device)");
    std::int64_t total = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      // Each size is at most the rows there are, so the running sum cannot overflow.
      SYNCBN_CHECK(sizes[i] >= 0 && sizes[i] <= input.size(0), "scatter: chunk ", i, " has size ", sizes[i],
                   ", expected 0 to ", input.size(0), " (the input's rows)");
      total += sizes[i];
    }
    SYNCBN_CHECK(total == input.size(0), "scatter: chunk sizes sum to ", total, ", expected ", input.size(0),
                 " (the input's dimension 0)");
  }
  std::vector<Tensor> chunks;
  chunks.reserve(devices.size());
  std::int64_t begin = 0;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const Tensor view = input.rows(begin, begin + sizes[i]);
    begin += sizes[i];
    chunks.push_back(devices[i].shares_memory_with(input.device()) ? view.relabel(devices[i]) : view.to(devices[i]));
  }
  return chunks;
}

Tensor gather(const std::vector<Tensor>& tensors, Device device) {
  SYNCBN_CHECK(!tensors.empty(), "gather: no tensors, expected at least one");
  device.check_available();
  const Tensor& first = tensors.front();
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    SYNCBN_CHECK(t.defined(), "gather: tensor ", i, " is undefined, expected a tensor");
    SYNCBN_CHECK(t.rank() >= 1, "gather: tensor ", i, " is a scalar, expected rank >= 1");
    SYNCBN_CHECK(t.dtype() == first.dtype(), "gather: tensor ", i, " has dtype ", dtype_name(t.dtype()),
                 ", expected ", dtype_name(first.dtype()), " (as tensor 0)");
    SYNCBN_CHECK(t.shape().with_rows(0) == first.shape().with_rows(0), "gather: tensor ", i, " has shape ", t.shape(),
                 ", expected ", first.shape().with_rows(t.size(0)), " (the trailing dimensions of tensor 0)");
    rows += t.size(0);
  }
  Tensor out = Tensor::empty(first.shape().with_rows(rows), first.dtype(), device);
  std::int64_t begin = 0;
  for (const Tensor& t : tensors) {
    out.rows(begin, begin + t.size(0)).copy_(t);
    begin += t.size(0);
  }
  return out;
}

std::vector<Tensor> reduce_add_coalesced(const std::vector<std::vector<Tensor>>& groups, Device target,
                                         Transport transport) {
  SYNCBN_CHECK(!groups.empty(), "reduce_add_coalesced: no groups, expected one per replica");
  SYNCBN_CHECK(groups.size() <= static_cast<std::size_t>(core::kMaxReplicas), "reduce_add_coalesced: ", groups.size(),
               " groups, expected at most ", core::kMaxReplicas);
  target.check_available();
  const std::vector<Tensor>& first = groups.front();
  std::vector<Device> group_devices;
  for (std::size_t k = 0; k < groups.size(); ++k) {
    const auto& group = groups[k];
    SYNCBN_CHECK(group.size() == first.size(), "reduce_add_coalesced: group ", k, " has ", group.size(),
                 " tensors, expected ", first.size(), " (as group 0)");
    for (std::size_t j = 0; j < group.size(); ++j) {
      const Tensor& t = group[j];
      SYNCBN_CHECK(t.defined(), "reduce_add_coalesced: group ", k, " tensor ", j, " is undefined, expected a tensor");
      SYNCBN_CHECK(t.dtype() == DType::Float32 || t.dtype() == DType::Float64, "reduce_add_coalesced: group ", k,
                   " tensor ", j, " has dtype ", dtype_name(t.dtype()), ", expected float32 or float64");
      SYNCBN_CHECK(t.dtype() == first[j].dtype(), "reduce_add_coalesced: group ", k, " tensor ", j, " has dtype ",
                   dtype_name(t.dtype()), ", expected ", dtype_name(first[j].dtype()), " (as group 0)");
      SYNCBN_CHECK(t.shape() == first[j].shape(), "reduce_add_coalesced: group ", k, " tensor ", j, " has shape ",
                   t.shape(), ", expected ", first[j].shape(), " (as group 0)");
      SYNCBN_CHECK(t.device() == group.front().device(), "reduce_add_coalesced: group ", k, " tensor ", j, " is on ",
                   t.device(), ", expected ", group.front().device(), " (the device of the group's tensor 0)");
    }
    if (!group.empty()) group_devices.push_back(group.front().device());
  }
  if (first.empty()) return {};

  std::vector<Tensor> out(first.size());
  const bool all_host = target.is_cpu() && std::all_of(group_devices.begin(), group_devices.end(),
                                                       [](Device d) { return d.is_cpu(); });
  if (all_host) {
    // Host memory: sum straight from the sources, no packing or copies.
    std::vector<const Tensor*> sources(groups.size());
    for (std::size_t j = 0; j < first.size(); ++j) {
      for (std::size_t k = 0; k < groups.size(); ++k) sources[k] = &groups[k][j];
      out[j] = core::sum_tensors(sources, target);
    }
    return out;
  }

  for (const auto& bucket : buckets_by_dtype(first)) {
    const std::int64_t total = total_numel(first, bucket);
    std::vector<Tensor> packed;
    packed.reserve(groups.size());
    for (const auto& group : groups) packed.push_back(pack(group, bucket, total));
    Tensor result;
    std::vector<Device> all = group_devices;
    if (transport == Transport::Auto && detail::nccl_available() && distinct_gpus(all) &&
        std::find(all.begin(), all.end(), target) != all.end()) {
      result = detail::nccl_reduce_sum(packed, target);
    } else {
      // One copy per replica onto the target, then one ordered float64 sum.
      std::vector<Tensor> moved;
      moved.reserve(packed.size());
      for (const Tensor& p : packed) moved.push_back(p.onto(target));
      std::vector<const Tensor*> sources;
      for (const Tensor& m : moved) sources.push_back(&m);
      result = core::sum_tensors(sources, target);
    }
    std::int64_t offset = 0;
    for (std::size_t j : bucket) {
      out[j] = result.view(offset, first[j].shape());
      offset += first[j].numel();
    }
  }
  return out;
}

std::vector<std::vector<Tensor>> broadcast_coalesced(const std::vector<Tensor>& tensors,
                                                     const std::vector<Device>& devices, Transport transport) {
  check_devices(devices, "broadcast_coalesced");
  for (std::size_t j = 0; j < tensors.size(); ++j) {
    SYNCBN_CHECK(tensors[j].defined(), "broadcast_coalesced: tensor ", j, " is undefined, expected a tensor");
    SYNCBN_CHECK(tensors[j].device() == tensors.front().device(), "broadcast_coalesced: tensor ", j, " is on ",
                 tensors[j].device(), ", expected ", tensors.front().device(), " (as tensor 0)");
  }
  std::vector<std::vector<Tensor>> out(devices.size(), std::vector<Tensor>(tensors.size()));
  if (tensors.empty()) return out;
  const Device source = tensors.front().device();
  for (const auto& bucket : buckets_by_dtype(tensors)) {
    const std::int64_t total = total_numel(tensors, bucket);
    std::vector<Tensor> copies;
    if (transport == Transport::Auto && detail::nccl_available() && distinct_gpus(devices) &&
        std::find(devices.begin(), devices.end(), source) != devices.end()) {
      copies = detail::nccl_broadcast(pack(tensors, bucket, total), devices);
    } else {
      // A device sharing the source's memory packs straight into its own
      // buffer; others get one copy of a pack made once on the source.
      Tensor packed;
      for (Device d : devices) {
        if (d.shares_memory_with(source)) {
          copies.push_back(pack_onto(tensors, bucket, total, d));
        } else {
          if (!packed.defined()) packed = pack(tensors, bucket, total);
          copies.push_back(packed.to(d));
        }
      }
    }
    for (std::size_t d = 0; d < devices.size(); ++d) {
      std::int64_t offset = 0;
      for (std::size_t j : bucket) {
        out[d][j] = copies[d].view(offset, tensors[j].shape());
        offset += tensors[j].numel();
      }
    }
  }
  return out;
}

}  // namespace syncbn::comm
