#pragma once
// What each replica worker sets up on its own thread: its GPU, and for a
// CPU replica its share of the cores for oneDNN's threads (Note [BLAS
// threads] in data_parallel.cpp).

#include <algorithm>
#include <cstdlib>
#include <thread>
#include <vector>

#include "syncbn/core/cpu.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/core/device.hpp"
#include "syncbn/sync/worker_pool.hpp"

namespace syncbn::parallel::detail {

/// Threads per library call for each of the CPU replicas of `devices`:
/// cores / (CPU replicas x processes on this node), at least 1; 0 when one
/// replica runs alone, which keeps the libraries' defaults. The callers
/// keep the user's choice instead where the environment names one.
inline int cpu_threads_per_replica(const std::vector<Device>& devices) {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (local == nullptr) local = std::getenv("MPI_LOCALNRANKS");
  const long processes = local != nullptr ? std::max(1L, std::atol(local)) : 1L;
  const long cpu_replicas = std::count_if(devices.begin(), devices.end(), [](Device d) { return d.is_cpu(); });
  if (cpu_replicas < 1 || cpu_replicas * processes < 2) return 0;
  const auto cores = static_cast<long>(std::max(1u, std::thread::hardware_concurrency()));
  return static_cast<int>(std::max(1L, cores / (cpu_replicas * processes)));
}

/// The start of worker i: device i becomes current (a GPU), and a CPU
/// replica's oneDNN calls get their share of the cores unless
/// OMP_NUM_THREADS chose (OpenMP's setting is per thread; OpenBLAS's is
/// process-wide, set by DataParallel).
inline sync::WorkerPool::OnStart replica_thread_setup(const std::vector<Device>& devices) {
  const int threads = std::getenv("OMP_NUM_THREADS") != nullptr ? 0 : cpu_threads_per_replica(devices);
  return [devices, threads](int i) {
    const Device d = devices[static_cast<std::size_t>(i)];
    cuda::set_device(d);
    if (d.is_cpu() && threads > 0) cpu::set_onednn_threads(threads);
  };
}

}  // namespace syncbn::parallel::detail
