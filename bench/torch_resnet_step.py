#!/usr/bin/env python3
"""PyTorch (CPU) time of the training step that bench_resnet_step times.

The same network with the same module names (torchvision's BasicBlock, a
CIFAR-style stem: conv1-bn1-relu, layer1..layer3 with widths 16, 32, 64,
avgpool, flatten, fc), input (batch, 1, 28, 28), cross-entropy, SGD with
momentum 0.9 and lr 0.05, at 1 and 2 intra-op threads (torch.set_num_threads;
OpenBLAS, which only fc's small products reach, is set to the same count).
Prints per (blocks, threads) the median step time over --reps samples of
--steps steps after --warmup steps, and, unless --no-split, where the time
goes: torch.autograd.profiler over --split-steps further steps, self CPU time
of the operators summed into convolution (names containing "conv"), batch
norm ("batch_norm") and the rest, in ms per step (the profiled step is
slower than the plain one; its total is printed beside them).

--channels-last puts the model and the input in torch.channels_last memory
format (PyTorch's NHWC), as bench_resnet_step --layout nhwc does for syncbn.

--check FILE (written by bench_resnet_step --write-check) loads its
state_dict, input and labels into this network and compares the losses of
three single-thread steps with syncbn's (#wrong: relative difference above
1e-4).

    /usr/bin/python3 bench/torch_resnet_step.py [--blocks 2,1] [--threads 1,2] [--batch 64]
        [--steps 5] [--warmup 2] [--reps 3] [--split-steps 3] [--no-split] [--check FILE]
        [--channels-last]
"""
import argparse
import ctypes
import json
import statistics
import struct
import time

import torch
from torch import nn

LR, MOMENTUM = 0.05, 0.9


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def resnet(blocks, widths=(16, 32, 64), in_channels=1, num_classes=10):
    """nn::resnet's layout and names."""
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False))
    net.add_module("bn1", nn.BatchNorm2d(widths[0]))
    net.add_module("relu", nn.ReLU(inplace=True))
    channels = widths[0]
    for stage, width in enumerate(widths):
        layer = nn.Sequential()
        for b in range(blocks):
            layer.add_module(str(b), BasicBlock(channels, width, 2 if stage > 0 and b == 0 else 1))
            channels = width
        net.add_module("layer%d" % (stage + 1), layer)
    net.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(channels, num_classes))
    return net


def set_blas_threads(n):
    """OpenBLAS's own thread count (torch.set_num_threads does not reach it)."""
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(n)
    except (OSError, AttributeError):
        pass


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file (Debian has no safetensors package)."""
    dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        flat = torch.frombuffer(bytearray(data[begin:end]), dtype=dtypes[entry["dtype"]])
        tensors[name] = flat.reshape(entry["shape"]).clone()
    return tensors, metadata


class Trainer:
    def __init__(self, blocks, batch, channels_last=False):
        torch.manual_seed(0)
        self.model = resnet(blocks)
        self.x = torch.randn(batch, 1, 28, 28)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.loss_fn = nn.CrossEntropyLoss()
        self.y = torch.randint(0, 10, (batch,))

    def step(self):
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()


def check(path):
    tensors, metadata = read_safetensors(path)
    expected = [float(v) for v in metadata["losses"].split(",")]
    t = Trainer(int(metadata["blocks"]), tensors["input"].shape[0])
    t.x, t.y = tensors.pop("input"), tensors.pop("labels")
    t.model.load_state_dict(tensors, strict=True)
    got = [t.step() for _ in expected]
    wrong = sum(abs(g - e) > 1e-4 * abs(e) for g, e in zip(got, expected))
    print("# check against %s: losses %s (syncbn %s), #wrong %d" %
          (path, ",".join("%.7g" % g for g in got), metadata["losses"], wrong), flush=True)


def split(trainer, steps):
    """Self CPU time per category, ms per step, from the autograd profiler."""
    with torch.autograd.profiler.profile() as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        wall = (time.perf_counter() - start) / steps
    conv = bn = rest = 0.0
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1e3 / steps
        if "conv" in e.key.lower():
            conv += ms
        elif "batch_norm" in e.key.lower():
            bn += ms
        else:
            rest += ms
    return wall * 1e3, conv, bn, rest


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="2,1")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--split-steps", type=int, default=3)
    ap.add_argument("--no-split", action="store_true")
    ap.add_argument("--check", metavar="FILE")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    print("# torch_resnet_step: torch %s, mkldnn %s, input (%d,1,28,28) %s" %
          (torch.__version__, torch.backends.mkldnn.is_available(), args.batch,
           "channels_last" if args.channels_last else "NCHW"))
    if args.check:
        torch.set_num_threads(1)
        set_blas_threads(1)
        check(args.check)
    print("%-6s %7s %10s %10s %10s %10s %10s %8s %8s %8s" % ("blocks", "threads", "step_ms", "min", "max",
                                                            "samples/s", "prof_ms", "conv", "bn", "rest"))
    for blocks in (int(b) for b in args.blocks.split(",")):
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            set_blas_threads(threads)
            trainer = Trainer(blocks, args.batch, args.channels_last)
            for _ in range(args.warmup):
                trainer.step()
            samples = []
            for _ in range(args.reps):
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.step()
                samples.append((time.perf_counter() - start) / args.steps)
            s = statistics.median(samples)
            row = "%-6d %7d %10.2f %10.2f %10.2f %10.0f" % (blocks, threads, s * 1e3, min(samples) * 1e3,
                                                             max(samples) * 1e3, args.batch / s)
            if not args.no_split:
                row += " %10.2f %8.2f %8.2f %8.2f" % split(trainer, args.split_steps)
            print(row, flush=True)


if __name__ == "__main__":
    main()
