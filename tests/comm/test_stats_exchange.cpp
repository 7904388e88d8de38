// comm::StatsExchange on its own (no nn layer): one group or ghost groups of
// segments, over replicas (threads), processes (the in-process thread
// engine) and both, against the moments and sums of the whole batch in long
// double; views of the caller's memory; its refusals.

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/matchers.hpp"
#include "support/seeds.hpp"
#include "support/thread_group.hpp"
#include "support/threads.hpp"
#include "syncbn/comm/stats_exchange.hpp"
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/error.hpp"

using namespace syncbn;
using namespace std::chrono_literals;
using syncbn::testing::kSeed;
using syncbn::testing::MessageIs;

namespace {

constexpr std::int64_t kChannels = 3, kLength = 4;

comm::GroupStats finalize(const core::ChannelMoments& merged, comm::GroupPlace) {
  auto [invstd, unbiased_var] = core::batch_norm_variance(merged, 1e-5, false);
  return comm::GroupStats{merged.count, merged.mean, std::move(invstd), std::move(unbiased_var)};
}

// The batch: rows of (C, L) float64 values, and each row's gradient sums.
struct Batch {
  Tensor x;
  std::vector<core::ChannelGradSums> row_sums;
};

Batch make_batch(std::int64_t rows) {
  Batch b{Tensor::randn(Shape{rows, kChannels, kLength}, kSeed + 70, DType::Float64, Device::cpu(0), 5.0, 2.0), {}};
  for (std::int64_t r = 0; r < rows; ++r)
    b.row_sums.push_back(core::ChannelGradSums{
        Tensor::randn(Shape{kChannels}, kSeed + 100 + static_cast<std::uint64_t>(r), DType::Float64, Device::cpu(0)),
        Tensor::randn(Shape{kChannels}, kSeed + 500 + static_cast<std::uint64_t>(r), DType::Float64, Device::cpu(0)),
        Tensor::randn(Shape{kChannels}, kSeed + 900 + static_cast<std::uint64_t>(r), DType::Float64, Device::cpu(0))});
  return b;
}

// Mean and biased variance of rows [begin, end) per channel, in long double.
std::vector<double> reference_mean(const Batch& b, std::int64_t begin, std::int64_t end, bool variance) {
  const std::vector<double> v = b.x.to_vector<double>();
  std::vector<double> out;
  for (std::int64_t c = 0; c < kChannels; ++c) {
    long double sum = 0;
    for (std::int64_t r = begin; r < end; ++r)
      for (std::int64_t l = 0; l < kLength; ++l) sum += v[static_cast<std::size_t>((r * kChannels + c) * kLength + l)];
    const long double mean = sum / static_cast<long double>((end - begin) * kLength);
    long double m2 = 0;
    for (std::int64_t r = begin; r < end; ++r)
      for (std::int64_t l = 0; l < kLength; ++l) {
        const long double d = v[static_cast<std::size_t>((r * kChannels + c) * kLength + l)] - mean;
        m2 += d * d;
      }
    out.push_back(static_cast<double>(variance ? m2 / static_cast<long double>((end - begin) * kLength) : mean));
  }
  return out;
}

// The sums of one field of the rows' gradient sums.
using SumsField = Tensor core::ChannelGradSums::*;

std::vector<double> reference_sums(const Batch& b, std::int64_t begin, std::int64_t end, SumsField field) {
  std::vector<long double> total(kChannels, 0);
  for (std::int64_t r = begin; r < end; ++r) {
    const auto& s = b.row_sums[static_cast<std::size_t>(r)];
    const std::vector<double> v = (s.*field).to_vector<double>();
    for (std::size_t c = 0; c < v.size(); ++c) total[c] += v[c];
  }
  return std::vector<double>(total.begin(), total.end());
}

// A participant's segments: its rows as one segment, or one per row.
std::vector<core::ChannelMoments> moments_of(const Batch& b, std::int64_t begin, std::int64_t end, std::int64_t v,
                                             Device device) {
  std::vector<core::ChannelMoments> segments;
  const Tensor x = b.x.rows(begin, end).onto(device);
  if (v == 0) return {core::batch_norm_moments(x)};
  for (std::int64_t r = 0; r < end - begin; ++r) segments.push_back(core::batch_norm_moments(x.rows(r, r + 1)));
  return segments;
}

std::vector<core::ChannelGradSums> sums_of(const Batch& b, std::int64_t begin, std::int64_t end, std::int64_t v,
                                           Device device) {
  std::vector<core::ChannelGradSums> segments;
  if (v > 0) {
    for (std::int64_t r = begin; r < end; ++r) {
      const auto& s = b.row_sums[static_cast<std::size_t>(r)];
      segments.push_back(core::ChannelGradSums{s.sum_dy.onto(device), s.sum_dy_xmu.onto(device), s.sum_xmu.onto(device)});
    }
    return segments;
  }
  // The participant's rows summed in order, as its shard's sums would be.
  auto summed = [&](SumsField field) {
    std::vector<double> total(kChannels, 0.0);
    for (std::int64_t r = begin; r < end; ++r) {
      const auto values = (b.row_sums[static_cast<std::size_t>(r)].*field).to_vector<double>();
      for (std::size_t c = 0; c < values.size(); ++c) total[c] += values[c];
    }
    return Tensor::from_vector(total, Shape{kChannels}, device);
  };
  return {core::ChannelGradSums{summed(&core::ChannelGradSums::sum_dy), summed(&core::ChannelGradSums::sum_dy_xmu),
                                summed(&core::ChannelGradSums::sum_xmu)}};
}

bool close(const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return false;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (std::abs(got[i] - want[i]) > 1e-12 * std::max(1.0, std::abs(want[i]))) return false;
  return true;
}

struct Outcome {
  comm::MergedStats merged;
  std::vector<core::ChannelGradSums> sums;
};

// Runs P processes (thread ranks) of K replicas (threads) over the batch,
// participant p = rank * K + copy holding rows [bounds[p], bounds[p + 1]).
std::vector<Outcome> run_job(const Batch& b, const std::vector<std::int64_t>& bounds, int processes, int replicas,
                             std::int64_t v) {
  std::vector<Outcome> outcomes(static_cast<std::size_t>(processes * replicas));
  const auto errors = syncbn::testing::run_ranks(processes, [&](comm::ProcessGroup& group) {
    std::shared_ptr<comm::ProcessGroup> shared(&group, [](comm::ProcessGroup*) {});  // the runner owns it
    std::vector<std::unique_ptr<comm::StatsExchange>> exchanges;
    for (int k = 0; k < replicas; ++k)
      exchanges.push_back(std::make_unique<comm::StatsExchange>(
          comm::StatsExchange::Options{"bn", 10s, kChannels, processes > 1 ? shared : nullptr}));
    if (replicas > 1) {
      const auto rendezvous = exchanges[0]->lead_replicas();
      for (int k = 1; k < replicas; ++k) exchanges[static_cast<std::size_t>(k)]->join_replicas(rendezvous, k);
    }
    const auto results = syncbn::testing::run_in_threads(replicas, [&](int k) -> std::string {
      const std::size_t p = static_cast<std::size_t>(group.rank() * replicas + k);
      const Device device = Device::cpu(k);
      auto& ex = *exchanges[static_cast<std::size_t>(k)];
      outcomes[p].merged = ex.merge(moments_of(b, bounds[p], bounds[p + 1], v, device), v, Device::cpu(0), finalize);
      outcomes[p].sums = ex.sum(sums_of(b, bounds[p], bounds[p + 1], v, device), v, Device::cpu(0),
                                outcomes[p].merged.layout);
      return "";
    });
    for (const auto& r : results)
      if (!r.empty()) SYNCBN_THROW(Error, r);
  });
  for (const auto& e : errors) REQUIRE(e.empty());
  return outcomes;
}

}  // namespace

TEST_CASE("An exchange gives every participant the statistics and sums of the whole batch",
          "[comm][exchange][threads]") {
  const int processes = GENERATE(1, 2, 3);
  const int replicas = GENERATE(1, 2, 3);
  CAPTURE(kSeed, processes, replicas);
  // Uneven shards, an empty one among them when there are enough.
  std::vector<std::int64_t> bounds{0};
  for (int p = 0; p < processes * replicas; ++p) bounds.push_back(bounds.back() + (p == 1 ? 0 : 2 + p % 3));
  const Batch b = make_batch(bounds.back());
  const auto outcomes = run_job(b, bounds, processes, replicas, 0);

  const auto mean = reference_mean(b, 0, bounds.back(), false), var = reference_mean(b, 0, bounds.back(), true);
  const auto s = reference_sums(b, 0, bounds.back(), &core::ChannelGradSums::sum_dy);
  const auto sx = reference_sums(b, 0, bounds.back(), &core::ChannelGradSums::sum_dy_xmu);
  const auto su = reference_sums(b, 0, bounds.back(), &core::ChannelGradSums::sum_xmu);
  for (std::size_t p = 0; p < outcomes.size(); ++p) {
    CAPTURE(p);
    const auto& o = outcomes[p];
    REQUIRE(o.merged.per_segment.size() == 1);
    CHECK(o.merged.per_segment[0].count == bounds.back() * kLength);
    CHECK(o.merged.per_segment[0].mean.device() == Device::cpu(static_cast<int>(p) % replicas));
    CHECK(close(o.merged.per_segment[0].mean.to_vector<double>(), mean));
    std::vector<double> want_invstd;
    for (const double x : var) want_invstd.push_back(1.0 / std::sqrt(x + 1e-5));
    CHECK(close(o.merged.per_segment[0].invstd.to_vector<double>(), want_invstd));
    // Every rank and replica holds the same bits.
    CHECK(o.merged.per_segment[0].mean.to_vector<double>() == outcomes[0].merged.per_segment[0].mean.to_vector<double>());
    // The running statistics' update: copy 0 of each process, or each non-replicated participant.
    const bool owner = replicas == 1 || p % static_cast<std::size_t>(replicas) == 0;
    CHECK(o.merged.first_group.has_value() == owner);
    if (owner) CHECK(o.merged.first_group->unbiased_var.defined());
    REQUIRE(o.sums.size() == 1);
    CHECK(close(o.sums[0].sum_dy.to_vector<double>(), s));
    CHECK(close(o.sums[0].sum_dy_xmu.to_vector<double>(), sx));
    CHECK(close(o.sums[0].sum_xmu.to_vector<double>(), su));
    CHECK(o.sums[0].sum_dy.to_vector<double>() == outcomes[0].sums[0].sum_dy.to_vector<double>());
  }
}

TEST_CASE("Ghost groups span replicas and processes and equal the groups of one participant bit for bit",
          "[comm][exchange][ghost][threads]") {
  const int processes = GENERATE(1, 2);
  const int replicas = GENERATE(1, 3);
  const std::int64_t v = 3;
  CAPTURE(kSeed, processes, replicas, v);
  // 4 groups over uneven shards: groups cross the shards' borders.
  std::vector<std::int64_t> bounds{0};
  const int participants = processes * replicas;
  for (int p = 0; p < participants; ++p) bounds.push_back(12 * (p + 1) / participants);
  const Batch b = make_batch(12);
  const auto outcomes = run_job(b, bounds, processes, replicas, v);
  const auto alone = run_job(b, {0, 12}, 1, 1, v).front();

  for (std::size_t p = 0; p < outcomes.size(); ++p) {
    const auto& o = outcomes[p];
    REQUIRE(static_cast<std::int64_t>(o.merged.per_segment.size()) == bounds[p + 1] - bounds[p]);
    for (std::int64_t i = 0; i < bounds[p + 1] - bounds[p]; ++i) {
      const std::int64_t row = bounds[p] + i, group = row / v;
      CAPTURE(p, row, group);
      const auto& got = o.merged.per_segment[static_cast<std::size_t>(i)];
      CHECK(got.count == v * kLength);
      CHECK(close(got.mean.to_vector<double>(), reference_mean(b, group * v, (group + 1) * v, false)));
      CHECK(got.mean.to_vector<double>() ==
            alone.merged.per_segment[static_cast<std::size_t>(row)].mean.to_vector<double>());
      CHECK(got.invstd.to_vector<double>() ==
            alone.merged.per_segment[static_cast<std::size_t>(row)].invstd.to_vector<double>());
      const auto& sums = o.sums[static_cast<std::size_t>(i)];
      CHECK(close(sums.sum_dy.to_vector<double>(), reference_sums(b, group * v, (group + 1) * v, &core::ChannelGradSums::sum_dy)));
      CHECK(close(sums.sum_xmu.to_vector<double>(),
                  reference_sums(b, group * v, (group + 1) * v, &core::ChannelGradSums::sum_xmu)));
      CHECK(sums.sum_dy_xmu.to_vector<double>() ==
            alone.sums[static_cast<std::size_t>(row)].sum_dy_xmu.to_vector<double>());
    }
    // Every owner of a running-statistics update sees the batch's first group.
    if (o.merged.first_group)
      CHECK(o.merged.first_group->mean.to_vector<double>() == alone.merged.first_group->mean.to_vector<double>());
  }
}

TEST_CASE("An exchange reads views of the caller's memory and returns tensors of its own", "[comm][exchange]") {
  CAPTURE(kSeed);
  const Batch b = make_batch(5);
  const core::ChannelMoments owned = core::batch_norm_moments(b.x);
  std::vector<double> mean = owned.mean.to_vector<double>(), m2 = owned.m2.to_vector<double>();
  const std::vector<double> mean_before = mean, m2_before = m2;
  comm::StatsExchange exchange({"bn", 1s, kChannels, nullptr});
  comm::MergedStats merged;
  {
    const core::ChannelMoments view{owned.count, Tensor::from_blob(mean.data(), Shape{kChannels}, DType::Float64, Device::cpu(0)),
                                    Tensor::from_blob(m2.data(), Shape{kChannels}, DType::Float64, Device::cpu(0))};
    merged = exchange.merge({view}, 0, Device::cpu(0), finalize);
  }
  CHECK(mean == mean_before);
  CHECK(m2 == m2_before);
  CHECK(close(merged.first_group->mean.to_vector<double>(), reference_mean(b, 0, 5, false)));
  CHECK(close(merged.first_group->unbiased_var.to_vector<double>(), [&] {
    std::vector<double> var = reference_mean(b, 0, 5, true);
    for (double& x : var) x *= 20.0 / 19.0;
    return var;
  }()));
}

TEST_CASE("An exchange names who takes the parameter gradients", "[comm][exchange][threads]") {
  comm::StatsExchange alone({"bn", 1s, kChannels, nullptr});
  CHECK_FALSE(alone.synchronizes());
  CHECK(alone.param_share() == comm::ParamShare::Local);
  comm::StatsExchange copy0({"bn", 1s, kChannels, nullptr}), copy1({"bn", 1s, kChannels, nullptr});
  copy1.join_replicas(copy0.lead_replicas(), 1);
  CHECK(copy0.param_share() == comm::ParamShare::Whole);
  CHECK(copy1.param_share() == comm::ParamShare::None);
  const auto errors = syncbn::testing::run_ranks(2, [](comm::ProcessGroup& group) {
    comm::StatsExchange ex({"bn", 1s, kChannels, std::shared_ptr<comm::ProcessGroup>(&group, [](comm::ProcessGroup*) {})});
    const comm::ParamShare want = group.rank() == 0 ? comm::ParamShare::Whole : comm::ParamShare::None;
    if (!ex.synchronizes() || ex.param_share() != want) SYNCBN_THROW(Error, "rank ", group.rank(), ": wrong share");
  });
  for (const auto& e : errors) CHECK(e.empty());
}

TEST_CASE("An exchange refuses bad arguments by name and a batch that its groups do not divide",
          "[comm][exchange]") {
  CHECK_THROWS_MATCHES(comm::StatsExchange({"bn", 1s, 0, nullptr}), InvalidArgument,
                       MessageIs("bn: StatsExchange: 0 channels, expected > 0"));
  CHECK_THROWS_MATCHES(comm::StatsExchange({"bn", -1ms, 2, nullptr}), InvalidArgument,
                       MessageIs("bn: StatsExchange: timeout -1 ms, expected >= 0 (0 waits forever)"));
  comm::StatsExchange ex({"bn", 1s, kChannels, nullptr});
  const Batch b = make_batch(4);
  CHECK_THROWS_MATCHES(ex.merge(moments_of(b, 0, 4, 1, Device::cpu(0)), 3, Device::cpu(0), finalize), InvalidArgument,
                       MessageIs("bn: a batch of 4 samples is not a multiple of virtual_batch_size 3, expected a multiple"));
  CHECK_THROWS_MATCHES(ex.merge(moments_of(b, 0, 4, 1, Device::cpu(0)), 0, Device::cpu(0), finalize), InvalidArgument,
                       MessageIs("bn: StatsExchange::merge: 4 segments for one group, expected 1 per participant"));
  CHECK_THROWS_MATCHES(ex.sum(sums_of(b, 0, 4, 0, Device::cpu(0)), -1, Device::cpu(0), {}), InvalidArgument,
                       MessageIs("bn: StatsExchange::sum: -1 segments per group, expected >= 0 (0: one group)"));
  CHECK_THROWS_MATCHES(ex.join_replicas(nullptr, 1), InvalidArgument,
                       MessageIs("bn: join_replicas: the rendezvous is null, expected copy 0's"));
  // What finalize throws reaches the caller.
  const comm::Finalize refuse = [](const core::ChannelMoments&, comm::GroupPlace place) -> comm::GroupStats {
    SYNCBN_THROW(InvalidArgument, "group ", place.index, " refused");
  };
  CHECK_THROWS_MATCHES(ex.merge(moments_of(b, 0, 4, 2, Device::cpu(0)), 2, Device::cpu(0), refuse), InvalidArgument,
                       MessageIs("group 0 refused"));
}
