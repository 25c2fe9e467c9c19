"""The convolution kernels alone, per 8-image shard (the size a training step hands each thread):
microseconds, GFLOP/s and the fraction of this machine's one-thread FMA peak measured in the same
run (kernels/peak.py), float32, one thread.

    python scripts/bench_conv.py [--repeats 5] [--calls 200]

Each row is the best of --repeats runs of --calls calls on the same arrays (in L1/L2, as in a
step). A developer's view of the kernels' code quality, not a benchmark of record (cnn bench).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cnncli.distributed import SHARD
from cnncli.kernels import conv16, conv32
from cnncli.kernels.peak import fma_peak_gflops


def best_seconds(fn, args, repeats, calls):
    fn(*args)                                    # compile or load, warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def rows(n):
    """[(name, kernel, arguments, FLOP per call)] for conv2 (6 -> 16 maps) and conv1 (1 -> 6)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    xp2 = rng.standard_normal((n, 6, 20, 20)).astype(f32)           # (N,6,20,20)
    w2 = rng.standard_normal((16, 6, 5, 5)).astype(f32)             # (16,6,5,5)
    dz2 = rng.standard_normal((n, 16, 16, 16)).astype(f32)          # (N,16,16,16)
    xp1 = rng.standard_normal((n, 1, 36, 36)).astype(f32)           # (N,1,36,36)
    w1 = rng.standard_normal((6, 1, 5, 5)).astype(f32)              # (6,1,5,5)
    dz1 = rng.standard_normal((n, 6, 32, 32)).astype(f32)           # (N,6,32,32)
    flop2, flop1 = 2 * dz2.size * 150, 2 * dz1.size * 25
    return [
        ("conv2 forward", conv16.conv16_forward_into, (xp2, w2, np.empty_like(dz2)), flop2),
        ("conv2 input gradient", conv16.conv16_backward_dx_into,
         (dz2, w2, np.zeros((n, 16, 20, 20), f32), np.empty((n, 6, 16, 16), f32)), flop2),
        ("conv2 weight gradient", conv16.conv16_backward_dw_into,
         (dz2, xp2, np.empty((n, 256, 16), f32), np.empty((6, 5, 5, 16), f32)), flop2),
        ("conv1 forward", conv32.conv32_forward_into, (xp1, w1, np.empty_like(dz1)), flop1),
        ("conv1 weight gradient", conv32.conv32_backward_dw_into,
         (dz1, xp1, np.empty((6, 1, 5, 5), f32), np.empty(6, f32)), flop1),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per kernel; the best is shown")
    ap.add_argument("--calls", type=int, default=200, help="calls per run")
    args = ap.parse_args()
    peak = fma_peak_gflops(1)
    print(f"one thread, float32, {SHARD} images per call; FMA peak {peak:.0f} GFLOP/s (kernels/peak.py)")
    print(f"{'kernel':<24}{'us/call':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for name, fn, fargs, flop in rows(SHARD):
        s = best_seconds(fn, fargs, args.repeats, args.calls)
        print(f"{name:<24}{s * 1e6:>9.1f}{flop / s / 1e9:>9.1f}{flop / s / 1e9 / peak:>9.0%}")
    print(f"peak again after the kernels: {fma_peak_gflops(1):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
