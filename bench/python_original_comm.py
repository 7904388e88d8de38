#!/usr/bin/env python3
"""Time per round of the pure-Python master/slave design that syncbn replaces.

The protocol reproduced here is the one of the original SynchronizedBatchNorm
comm module: slaves put (id, message) into a queue and wait on a
condition-variable future for their reply; the master drains the queue, runs
the callback, fills every future, then drains one acknowledgement per slave.
The original drains the acknowledgements from the message queue itself, which
breaks with three or more threads in tight loops (a fast slave's next message
is taken as an acknowledgement; this script hit it at once). Here they have a
queue of their own, the smallest change that makes the baseline run.
Payloads are torch tensors when torch imports (as in the original), else
Python lists.

    python3 bench/python_original_comm.py [--threads 2,4,8] [--channels 1,256]
                                          [--rounds 10000] [--reps 3]
"""
import argparse
import queue
import statistics
import threading
import time

try:
    import torch
    torch.set_num_threads(1)
except ImportError:  # lists instead of tensors
    torch = None


class Future:
    """One value handed from one thread to another through a Condition."""

    def __init__(self):
        self._cond = threading.Condition()
        self._value = None
        self._has = False

    def put(self, value):
        with self._cond:
            self._value, self._has = value, True
            self._cond.notify()

    def get(self):
        with self._cond:
            while not self._has:
                self._cond.wait()
            value, self._value, self._has = self._value, None, False
            return value


class Master:
    def __init__(self, callback):
        self.callback = callback
        self.queue = queue.Queue()
        self.acks = queue.Queue()
        self.futures = {}

    def register(self, ident):
        fut = Future()
        self.futures[ident] = fut
        return Pipe(ident, self.queue, self.acks, fut)

    def run_master(self, msg):
        items = [(0, msg)] + [self.queue.get() for _ in self.futures]
        items.sort(key=lambda item: item[0])
        replies = self.callback(items)
        for ident, reply in replies[1:]:
            self.futures[ident].put(reply)
        for _ in self.futures:
            self.acks.get()
        return replies[0][1]


class Pipe:
    def __init__(self, ident, q, acks, fut):
        self.ident, self.queue, self.acks, self.future = ident, q, acks, fut

    def run_slave(self, msg):
        self.queue.put((self.ident, msg))
        reply = self.future.get()
        self.acks.put(True)
        return reply


def make_payload(ident, channels):
    count = 16 + ident
    xs = [0.5 + c + ident for c in range(channels)]
    sums = [count * x for x in xs]
    ssums = [count * (x * x + 1.0 + ident) for x in xs]
    if torch is not None:
        return (torch.tensor(sums, dtype=torch.float64), torch.tensor(ssums, dtype=torch.float64), count)
    return (sums, ssums, count)


def reduce(items):
    parts = [m for _, m in items]
    count = sum(p[2] for p in parts)
    if torch is not None:
        total = torch.stack([p[0] for p in parts]).sum(0)
        total_sq = torch.stack([p[1] for p in parts]).sum(0)
        mean = total / count
        inv_std = (total_sq / count - mean * mean + 1e-5).rsqrt()
        return [(ident, (mean.clone(), inv_std.clone())) for ident, _ in items]
    total = [sum(col) for col in zip(*(p[0] for p in parts))]
    total_sq = [sum(col) for col in zip(*(p[1] for p in parts))]
    mean = [s / count for s in total]
    inv_std = [(q / count - m * m + 1e-5) ** -0.5 for q, m in zip(total_sq, mean)]
    return [(ident, (list(mean), list(inv_std))) for ident, _ in items]


def run_once(k, channels, rounds, warmup):
    master = Master(reduce)
    pipes = [master.register(i) for i in range(1, k)]
    payloads = [make_payload(i, channels) for i in range(k)]
    elapsed = [0.0]

    def body(ident):
        fn = master.run_master if ident == 0 else pipes[ident - 1].run_slave
        for _ in range(warmup):
            fn(payloads[ident])
        start = time.perf_counter()
        for _ in range(rounds):
            fn(payloads[ident])
        if ident == 0:
            elapsed[0] = time.perf_counter() - start

    threads = [threading.Thread(target=body, args=(i,)) for i in range(1, k)]
    for t in threads:
        t.start()
    body(0)
    for t in threads:
        t.join()
    return elapsed[0] * 1e6 / rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="2,4,8")
    ap.add_argument("--channels", default="1,256")
    ap.add_argument("--rounds", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    payload = "torch %s tensors" % torch.__version__ if torch is not None else "Python lists"
    print("# python_original_comm: payload %s, %d rounds x %d reps" % (payload, args.rounds, args.reps))
    print("%3s %8s %-9s %12s %10s %10s" % ("K", "channels", "impl", "median_us", "min_us", "max_us"))
    for k in (int(v) for v in args.threads.split(",")):
        for c in (int(v) for v in args.channels.split(",")):
            samples = [run_once(k, c, args.rounds, args.warmup) for _ in range(args.reps)]
            print("%3d %8d %-9s %12.2f %10.2f %10.2f" % (k, c, "python", statistics.median(samples),
                                                          min(samples), max(samples)), flush=True)


if __name__ == "__main__":
    main()
