#!/usr/bin/env python3
"""PyTorch batch norm (training mode) on the shapes of bench_batchnorm:
forward and forward+backward, NCHW and channels-last, one thread, on the CPU
or (--device cuda) a GPU.

Run it with glibc's malloc told to keep large blocks (scripts/bench_batchnorm.sh
does), or page faults on every call dominate PyTorch's figures:
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 \\
    python3 bench/torch_batchnorm.py [--shapes 32x64x56x56,...] [--min-ms 200] [--reps 5]

GB/s counts the same passes as bench_batchnorm: forward 3 S, forward+backward 8 S.
--relu adds forward+backward of batch norm followed by a separate ReLU in each
layout (what bench_batchnorm_forms's fused rows replace).
"""
import argparse
import statistics
import time

import torch


def time_it(fn, min_s, reps, warmup):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="32x64x56x56,64x256x14x14,256x1024,8x32x16x32x32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-ms", type=float, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]; on a GPU every timed call synchronizes")
    ap.add_argument("--relu", action="store_true", help="also time batch norm then ReLU, forward+backward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print("# torch_batchnorm: torch %s, %d thread(s), float32, training mode, on %s"
          % (torch.__version__, args.threads, device))
    print("%-16s %-22s %10s %8s" % ("shape", "what", "time_ms", "GB/s"))
    for text in args.shapes.split(","):
        shape = [int(v) for v in text.split("x")]
        nbytes = 4.0 * torch.Size(shape).numel()
        bn = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[len(shape)](shape[1]).to(device)
        # (name, shape, memory format, module)
        layouts = [("NCHW", shape, torch.contiguous_format, bn)]
        if len(shape) == 4:
            layouts.append(("channels-last", shape, torch.channels_last, bn))
        if len(shape) == 5:
            layouts.append(("channels-last", shape, torch.channels_last_3d, bn))
        if len(shape) == 2:
            # (N, C) as (N, C, 1, 1) in channels-last: PyTorch's CPU kernels
            # treat a contiguous input with one value per sample and channel
            # as channels-last already, so the two rows should agree.
            layouts.append(("channels-last", shape + [1, 1], torch.channels_last,
                            torch.nn.BatchNorm2d(shape[1]).to(device)))
        for name, xshape, fmt, layer in layouts:
            x = (torch.randn(*xshape, device=device) * 2 + 0.5).contiguous(memory_format=fmt)
            dy = torch.randn(*xshape, device=device).contiguous(memory_format=fmt)
            x.requires_grad_(True)

            def forward(layer=layer, x=x):
                with torch.no_grad():
                    layer(x)
                sync()

            def forward_backward(layer=layer, x=x, dy=dy):
                x.grad = None
                layer(x).backward(dy)
                sync()

            t = time_it(forward, args.min_ms / 1e3, args.reps, args.warmup)
            print("%-16s %-22s %10.3f %8.1f" % (text, "fwd " + name, t * 1e3, 3 * nbytes / t / 1e9), flush=True)
            t = time_it(forward_backward, args.min_ms / 1e3, args.reps, args.warmup)
            print("%-16s %-22s %10.3f %8.1f" % (text, "fwd+bwd " + name, t * 1e3, 8 * nbytes / t / 1e9), flush=True)
            if args.relu:
                def with_relu(layer=layer, x=x, dy=dy):
                    x.grad = None
                    torch.relu(layer(x)).backward(dy)
                    sync()

                t = time_it(with_relu, args.min_ms / 1e3, args.reps, args.warmup)
                print("%-16s %-22s %10.3f %8.1f" % (text, "fwd+bwd " + name + "+relu", t * 1e3, 8 * nbytes / t / 1e9),
                      flush=True)


if __name__ == "__main__":
    main()
