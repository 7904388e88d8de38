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

// Writes `row` at `at` (row_bytes<Row>(C) bytes).
inline void write_row(std::byte* at, const core::ChannelMoments& row) {
  const std::vector<double> mean = row.mean.to_vector<double>(), m2 = row.m2.to_vector<double>();
  std::memcpy(at, &row.count, sizeof(std::int64_t));
  std::memcpy(at + sizeof(std::int64_t), mean.data(), mean.size() * sizeof(double));
  std::memcpy(at + sizeof(std::int64_t) + mean.size() * sizeof(double), m2.data(), m2.size() * sizeof(double));
}
inline void write_row(std::byte* at, const core::ChannelGradSums& row) {
  std::size_t offset = 0;
  for (const auto field : kGradSumFields) {
    const std::vector<double> values = (row.*field).to_vector<double>();
    std::memcpy(at + offset, values.data(), values.size() * sizeof(double));
    offset += values.size() * sizeof(double);
  }
}

// The C values of vector `k` of a packed row, after the row's header.
template <class Row>
std::vector<double> read_vector(const std::byte* at, std::size_t channels, std::size_t k) {
  const std::size_t header = std::is_same_v<Row, core::ChannelMoments> ? sizeof(std::int64_t) : 0;
  std::vector<double> values(channels);
  std::memcpy(values.data(), at + header + k * channels * sizeof(double), channels * sizeof(double));
  return values;
}

// The row packed at `at`, its tensors on `device`.
template <class Row>
Row read_row(const std::byte* at, std::size_t channels, Device device);
template <>
inline core::ChannelMoments read_row<core::ChannelMoments>(const std::byte* at, std::size_t channels, Device device) {
  const Shape shape{static_cast<std::int64_t>(channels)};
  core::ChannelMoments row;
  std::memcpy(&row.count, at, sizeof(std::int64_t));
  row.mean = Tensor::from_vector(read_vector<core::ChannelMoments>(at, channels, 0), shape).onto(device);
  row.m2 = Tensor::from_vector(read_vector<core::ChannelMoments>(at, channels, 1), shape).onto(device);
  return row;
}
template <>
inline core::ChannelGradSums read_row<core::ChannelGradSums>(const std::byte* at, std::size_t channels,
                                                              Device device) {
  const Shape shape{static_cast<std::int64_t>(channels)};
  core::ChannelGradSums row;
  for (std::size_t k = 0; k < kGradSumFields.size(); ++k)
    row.*kGradSumFields[k] = Tensor::from_vector(read_vector<core::ChannelGradSums>(at, channels, k), shape).onto(device);
  return row;
}

// `rows` packed into `rows_per_rank` row slots (the rest zero), what every
// rank contributes to an all-gather of equal sizes.
template <class Row>
std::vector<std::byte> pack_rows(std::span<const Row> rows, std::size_t rows_per_rank, std::size_t channels) {
  const std::size_t bytes = row_bytes<Row>(channels);
  std::vector<std::byte> payload(rows_per_rank * bytes);
  for (std::size_t i = 0; i < rows.size(); ++i) write_row(payload.data() + i * bytes, rows[i]);
  return payload;
}

}  // namespace syncbn::comm::detail
