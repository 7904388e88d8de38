"""PyTorch's side of bench_dist_exchange: the collectives that PyTorch's
SyncBatchNorm makes per layer and training step, over the Gloo backend on
the CPU, run under mpirun like bench_dist_exchange:

    mpirun -np P python3 bench/torch_gloo_exchange.py [--channels 64,256,1024]
           [--iters 200] [--reps 7] [--warmup 20] [--port 29512]

PyTorch 1.13's SyncBatchNorm refuses CPU tensors ("SyncBatchNorm expected
input tensor to be on GPU"), so its layer cannot run here; what is timed is
exactly what its forward and backward exchange (torch/nn/modules/_functions.py):
forward all_gather of torch.cat([mean, invstd, count]) (2C + 1 float32 per
rank), backward all_reduce of torch.cat([sum_dy, sum_dy_xmu]) (2C float32).
Per rep: --iters steps between barriers; the row is the median over --reps of
the slowest rank's microseconds per step. The rank and size come from
OpenMPI's environment; the processes meet over TCP on 127.0.0.1:--port.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="64,256,1024")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--port", type=int, default=29512)
    args = parser.parse_args()
    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=size)
    if rank == 0:
        print(f"# torch_gloo_exchange: torch {torch.__version__}, {size} processes, Gloo; median of {args.reps} "
              f"reps of {args.iters} steps, slowest rank, us per layer and step")
        print(f"{'P':<8} {'C':>6} {'gloo_us':>12}")
    for c in [int(v) for v in args.channels.split(",")]:
        forward = torch.ones(2 * c + 1)
        gathered = [torch.empty(2 * c + 1) for _ in range(size)]
        backward = torch.ones(2 * c)

        def step():
            dist.all_gather(gathered, forward)
            dist.all_reduce(backward, dist.ReduceOp.SUM)

        for _ in range(args.warmup):
            step()
        samples = []
        for _ in range(args.reps):
            dist.barrier()
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            us = torch.tensor([(time.perf_counter() - start) / args.iters * 1e6])
            dist.all_reduce(us, dist.ReduceOp.MAX)
            samples.append(us.item())
        samples.sort()
        if rank == 0:
            print(f"{size:<8} {c:>6} {samples[len(samples) // 2]:>12.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
