#!/usr/bin/env python3
"""PyTorch (CPU) time of the training step that bench_data_parallel times:
Linear(w,w)-ReLU-Linear(w,w)-ReLU-Linear(w,w), MSE loss, SGD with momentum,
at 1 and 2 intra-op threads (PyTorch's CPU parallelism; nn.DataParallel is
GPU-only).

    python3 bench/torch_mlp_step.py [--width 1024] [--batch 256] [--steps 20] [--reps 5]
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    w = args.width
    print("# torch_mlp_step: torch %s, width %d, batch %d" % (torch.__version__, w, args.batch))
    print("%-9s %8s %12s %12s" % ("model", "threads", "step_ms", "samples/s"))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(w, w), torch.nn.ReLU(), torch.nn.Linear(w, w), torch.nn.ReLU(),
                                    torch.nn.Linear(w, w))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch, w)
        target = torch.randn(args.batch, w)
        loss_fn = torch.nn.MSELoss()

        def step():
            opt.zero_grad()
            loss = loss_fn(model(x), target)
            loss.backward()
            opt.step()

        for _ in range(args.warmup):
            step()
        samples = []
        for _ in range(args.reps):
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            samples.append((time.perf_counter() - start) / args.steps)
        s = statistics.median(samples)
        print("%-9s %8d %12.3f %12.0f" % ("mlp", threads, s * 1e3, args.batch / s), flush=True)


if __name__ == "__main__":
    main()
