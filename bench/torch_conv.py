#!/usr/bin/env python3
"""PyTorch (CPU) time of the convolution stages that bench_conv times.

For each shape (N x C x H x W - C_out - k<kernel> s<stride> p<padding>, no
bias, float32): the forward (torch.nn.functional.conv2d without autograd),
the input gradient and the weight gradient (aten::convolution_backward, the
operator autograd calls, with one gradient requested at a time), and
forward+backward through autograd (y = conv2d(x, w); y.backward(dy), both
gradients at once), at 1 and 2 threads (torch.set_num_threads). Median of
--reps samples of at least --min-ms each; GFLOP/s as bench_conv counts them
(the direct convolution's 2 * N * C_out * H_out * W_out * C * k * k per stage).

    /usr/bin/python3 bench/torch_conv.py [--shapes 64x16x28x28-16-k3s1p1,...] [--threads 1,2]
        [--min-ms 200] [--reps 5]
"""
import argparse
import re
import statistics
import time

import torch
import torch.nn.functional as F

DEFAULT_SHAPES = ("64x1x28x28-16-k3s1p1,64x16x28x28-16-k3s1p1,64x16x28x28-32-k3s2p1,64x32x14x14-32-k3s1p1,"
                  "64x32x28x28-64-k3s2p1,64x64x7x7-64-k3s1p1")


def seconds_per_call(fn, min_s, reps, warmup=2):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        calls, start = 0, time.perf_counter()
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
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-ms", type=float, default=200)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    min_s = args.min_ms / 1e3
    print("# torch_conv: torch %s, mkldnn %s; median of %d samples of >= %.0f ms per stage" %
          (torch.__version__, torch.backends.mkldnn.is_available(), args.reps, args.min_ms))
    print("%-24s %7s %9s %9s %9s %9s %9s %11s" % ("shape", "threads", "fwd_ms", "dx_ms", "dw_ms", "fwdbwd_ms",
                                                  "fwd_GF/s", "fwdbwd_GF/s"))
    for text in args.shapes.split(","):
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)x(\d+)-(\d+)-k(\d+)s(\d+)p(\d+)", text)
        if not m:
            raise SystemExit("--shapes: expected NxCxHxW-Cout-kKsSpP, got '%s'" % text)
        n, c, h, w, c_out, k, stride, pad = map(int, m.groups())
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        flops = 2.0 * n * c_out * oh * ow * c * k * k
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            x = torch.randn(n, c, h, w, requires_grad=True)
            weight = (torch.randn(c_out, c, k, k) / (c * k * k) ** 0.5).requires_grad_()
            dy = torch.randn(n, c_out, oh, ow)

            def fwd():
                with torch.no_grad():
                    F.conv2d(x, weight, None, stride, pad)

            def backward_one(mask):
                return lambda: torch.ops.aten.convolution_backward(dy, x, weight, None, [stride, stride], [pad, pad],
                                                                   [1, 1], False, [0, 0], 1, mask)

            def fwd_bwd():
                x.grad = None
                weight.grad = None
                F.conv2d(x, weight, None, stride, pad).backward(dy)

            tf = seconds_per_call(fwd, min_s, args.reps)
            tx = seconds_per_call(backward_one([True, False, False]), min_s, args.reps)
            tw = seconds_per_call(backward_one([False, True, False]), min_s, args.reps)
            tb = seconds_per_call(fwd_bwd, min_s, args.reps)
            print("%-24s %7d %9.3f %9.3f %9.3f %9.3f %9.1f %11.1f" % (text, threads, tf * 1e3, tx * 1e3, tw * 1e3,
                                                                      tb * 1e3, flops / tf / 1e9, 3 * flops / tb / 1e9),
                  flush=True)


if __name__ == "__main__":
    main()
