// bench_collectives: bandwidth of device copies, reduce_add_coalesced and
// broadcast_coalesced for 1 KiB ... 256 MiB, beside a STREAM-style copy of
// the same size measured in the same run.
//
//   bench_collectives [--devices cpu:0,cpu:1] [--min-kib 1] [--max-mib 256]
//                     [--reps 5] [--min-ms 50] [--warmup 2]
//
// GB/s counts the bytes an ideal implementation must move: copy reads and
// writes S; reduce-add of K replicas reads K*S and writes S; broadcast to K
// devices reads S and writes K*S; stream is STREAM's copy kernel, a plain
// loop over 64-byte-aligned buffers (reads S, writes S; glibc's memcpy is no
// yardstick here: its `rep movsb` path is slow on some AMD parts). Each
// row is checked once before timing (#wrong = elements off the reference).
// A sample repeats the operation until --min-ms have passed; the median of
// --reps samples is reported.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "syncbn/comm/collectives.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/core/tensor.hpp"

namespace {

using namespace std::chrono;
using syncbn::Device;
using syncbn::DType;
using syncbn::Shape;
using syncbn::Tensor;

// Median seconds per call of fn, with the devices synchronised after each call.
double time_op(const std::function<void()>& fn, const std::vector<Device>& devices, int reps, double min_s, int warmup) {
  return syncbn::bench::median_seconds_per_call(fn, min_s, reps, warmup, [&] {
    for (Device d : devices) syncbn::cuda::synchronize(d);
  });
}

long count_wrong(const Tensor& got, float want) {
  long wrong = 0;
  for (float v : got.to_vector<float>()) wrong += v != want;
  return wrong;
}

void print_row(const char* op, std::size_t bytes, int k, double seconds, double moved, long wrong) {
  std::printf("%-10s %12zu %3d %12.2f %10.2f %7ld\n", op, bytes, k, seconds * 1e6, moved / seconds / 1e9, wrong);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  using syncbn::bench::flag;
  std::vector<Device> devices;
  for (const auto& text : syncbn::bench::str_list(flag(argc, argv, "--devices", "cpu:0,cpu:1")))
    devices.push_back(Device::parse(text));
  const long min_kib = std::stol(flag(argc, argv, "--min-kib", "1"));
  const long max_mib = std::stol(flag(argc, argv, "--max-mib", "256"));
  const int reps = std::stoi(flag(argc, argv, "--reps", "5"));
  const double min_s = std::stod(flag(argc, argv, "--min-ms", "50")) / 1e3;
  const int warmup = std::stoi(flag(argc, argv, "--warmup", "2"));
  const int k = static_cast<int>(devices.size());
  const Device root = devices.front();

  std::printf("# bench_collectives: devices");
  for (Device d : devices) std::printf(" %s", d.str().c_str());
  std::printf(", float32, median of %d samples of >= %.0f ms\n", reps, min_s * 1e3);
  std::printf("%-10s %12s %3s %12s %10s %7s\n", "op", "bytes", "K", "time_us", "GB/s", "#wrong");
  for (std::size_t bytes = static_cast<std::size_t>(min_kib) << 10; bytes <= (static_cast<std::size_t>(max_mib) << 20);
       bytes *= 4) {
    const auto n = static_cast<std::int64_t>(bytes / sizeof(float));
    const double s = static_cast<double>(bytes);

    // STREAM copy on the host: the memory-bandwidth yardstick.
    const Tensor sa = Tensor::full(Shape{n}, 1.0, DType::Float32, Device::cpu());
    const Tensor sb = Tensor::zeros(Shape{n}, DType::Float32, Device::cpu());
    const double t_stream = time_op([&] { syncbn::bench::stream_copy(sb.data<float>(), sa.data<float>(), n); }, {}, reps, min_s, warmup);
    print_row("stream", bytes, 1, t_stream, 2 * s, count_wrong(sb, 1.0f));

    // Copy to the last device.
    const Tensor src = Tensor::full(Shape{n}, 1.0, DType::Float32, root);
    const Tensor dst = Tensor::empty(Shape{n}, DType::Float32, devices.back());
    dst.copy_(src);
    const long copy_wrong = count_wrong(dst, 1.0f);
    print_row("copy", bytes, 2, time_op([&] { dst.copy_(src); }, devices, reps, min_s, warmup), 2 * s, copy_wrong);

    // Reduce-add of one tensor per device onto the first.
    std::vector<std::vector<Tensor>> groups;
    for (int r = 0; r < k; ++r) groups.push_back({Tensor::full(Shape{n}, r + 1.0, DType::Float32, devices[static_cast<std::size_t>(r)])});
    const float want = static_cast<float>(k * (k + 1) / 2);
    const long reduce_wrong = count_wrong(syncbn::comm::reduce_add_coalesced(groups, root)[0], want);
    const double t_reduce =
        time_op([&] { (void)syncbn::comm::reduce_add_coalesced(groups, root); }, devices, reps, min_s, warmup);
    print_row("reduce_add", bytes, k, t_reduce, (k + 1) * s, reduce_wrong);

    // Broadcast from the first device to all.
    const auto copies = syncbn::comm::broadcast_coalesced({src}, devices);
    long bcast_wrong = 0;
    for (const auto& c : copies) bcast_wrong += count_wrong(c[0], 1.0f);
    const double t_bcast =
        time_op([&] { (void)syncbn::comm::broadcast_coalesced({src}, devices); }, devices, reps, min_s, warmup);
    print_row("broadcast", bytes, k, t_bcast, (k + 1) * s, bcast_wrong);
  }
  return 0;
}
