#pragma once
// Per-channel rows packed for collectives across processes, written once for
// the statistics exchange: moments travel as (int64 count, float64 mean,
// float64 M2), gradient sums as (float64 sum(dy), float64 sum(dy * (x -
// mean)), float64 sum(x - mean)), C values per vector, in host byte order
// (the ranks of a job run the same build).

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "syncbn/core/batch_norm.hpp"

namespace syncbn::comm::detail {

// The gradient sums' tensors in their packed order: what the exchange
// moves, sums and packs, field by field.
inline constexpr std::array<Tensor core::ChannelGradSums::*, 3> kGradSumFields{
    &core::ChannelGradSums::sum_dy, &core::ChannelGradSums::sum_dy_xmu, &core::ChannelGradSums::sum_xmu};

// `sums` with fn applied to each of its tensors.
template <class Fn>
core::ChannelGradSums map_grad_sums(const core::ChannelGradSums& sums, Fn&& fn) {
  core::ChannelGradSums out;
  for (const auto field : kGradSumFields) out.*field = fn(sums.*field);
  return out;
}

// Bytes of one packed row of `channels` channels.
template <class Row>
std::size_t row_bytes(std::size_t channels);
template <>
inline std::size_t row_bytes<core::ChannelMoments>(std::size_t channels) {
  return sizeof(std::int64_t) + 2 * channels * sizeof(double);
}
template <>
inline std::size_t row_bytes<core::ChannelGradSums>(std::size_t channels) {
  return kGradSumFields.size() * channels * sizeof(double);
}

// The `channels` float64 values at `at` as a host tensor that views them
// (the packed rows are only ever read and written through such views, so
// that packing copies each vector once, from or to any device).
inline Tensor host_view(const std::byte* at, std::size_t channels) {
  return Tensor::from_blob(const_cast<std::byte*>(at), Shape{static_cast<std::int64_t>(channels)}, DType::Float64,
                           Device());
}

// Offset of vector `k` of a packed row of `channels` channels, after the row's header.
template <class Row>
std::size_t vector_offset(std::size_t channels, std::size_t k) {
  const std::size_t header = std::is_same_v<Row, core::ChannelMoments> ? sizeof(std::int64_t) : 0;
  return header + k * channels * sizeof(double);
}

// Copies `values` (C values of any floating dtype, any device) to the
// packed vector at `at`.
inline void write_vector(std::byte* at, std::size_t channels, const Tensor& values) {
  host_view(at, channels).copy_(values.dtype() == DType::Float64 ? values : values.to(DType::Float64));
}

// Writes `row` of `channels` channels at `at` (row_bytes<Row>(C) bytes).
inline void write_row(std::byte* at, std::size_t channels, const core::ChannelMoments& row) {
  std::memcpy(at, &row.count, sizeof(std::int64_t));
  write_vector(at + vector_offset<core::ChannelMoments>(channels, 0), channels, row.mean);
  write_vector(at + vector_offset<core::ChannelMoments>(channels, 1), channels, row.m2);
}
inline void write_row(std::byte* at, std::size_t channels, const core::ChannelGradSums& row) {
  for (std::size_t k = 0; k < kGradSumFields.size(); ++k)
    write_vector(at + vector_offset<core::ChannelGradSums>(channels, k), channels, row.*kGradSumFields[k]);
}

// A copy on `device` of vector `k` of the row packed at `at`.
template <class Row>
Tensor read_vector(const std::byte* at, std::size_t channels, std::size_t k, Device device) {
  Tensor out = Tensor::empty(Shape{static_cast<std::int64_t>(channels)}, DType::Float64, device);
  out.copy_(host_view(at + vector_offset<Row>(channels, k), channels));
  return out;
}

// The row packed at `at`, its tensors on `device`.
template <class Row>
Row read_row(const std::byte* at, std::size_t channels, Device device);
template <>
inline core::ChannelMoments read_row<core::ChannelMoments>(const std::byte* at, std::size_t channels, Device device) {
  core::ChannelMoments row;
  std::memcpy(&row.count, at, sizeof(std::int64_t));
  row.mean = read_vector<core::ChannelMoments>(at, channels, 0, device);
  row.m2 = read_vector<core::ChannelMoments>(at, channels, 1, device);
  return row;
}
template <>
inline core::ChannelGradSums read_row<core::ChannelGradSums>(const std::byte* at, std::size_t channels,
                                                              Device device) {
  core::ChannelGradSums row;
  for (std::size_t k = 0; k < kGradSumFields.size(); ++k)
    row.*kGradSumFields[k] = read_vector<core::ChannelGradSums>(at, channels, k, device);
  return row;
}

// `rows` packed into `payload`, resized to `rows_per_rank` row slots (the
// rest zero): what every rank contributes to an all-gather of equal sizes.
template <class Row>
void pack_rows(std::span<const Row> rows, std::size_t rows_per_rank, std::size_t channels,
               std::vector<std::byte>& payload) {
  const std::size_t bytes = row_bytes<Row>(channels);
  payload.assign(rows_per_rank * bytes, std::byte{0});
  for (std::size_t i = 0; i < rows.size(); ++i) write_row(payload.data() + i * bytes, channels, rows[i]);
}

}  // namespace syncbn::comm::detail
