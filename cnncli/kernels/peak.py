"""The machine's measured fused multiply-add peak, the yardstick `cnn bench` divides its GFLOP/s by.
Not a network kernel, and not a spec sheet.
"""

# The machine's measured fused multiply-add peak, the yardstick `cnn bench` divides its GFLOP/s by:
# independent chains of 16-lane float32 FMAs (simd.vfma) per thread, one chain per register, so
# nothing but the FMA units bounds it. Two probes, the best of which counts: 12 chains fill the 32
# registers of AVX-512 (enough FMAs in flight for two units with 4-cycle latency), 6 chains the 16
# of AVX2, where a 16-lane vector takes two registers: 12 chains there spill to the stack and
# measured half the peak (54 against 102 GFLOP/s on one thread of the AVX2 VM of
# docs/performance.md). Not a network kernel, and not a spec sheet: CPUs with 256-bit and 512-bit
# FMA units, one or two of them, give different peaks, and the VM's CPU can change.
#
# Shape legend: L = 16 lanes.

from __future__ import annotations

import threading
import time

import numpy as np
from numba import njit

from .simd import LANES, vadd, vfma, vsplat, vstore

CHAINS = 12        # fma_chains_into's chains; fma_chains6_into runs the first 6 of them


@njit(cache=True, nogil=True)
def fma_chains_into(x, iters, out):
    # x (14,) float32: b, c and the 12 chains' starts   ->   out (L,) = the sum of the 12 chains after
    # `iters` steps of a = a * b + c each (2 * 16 * 12 FLOP per step)
    b, c = vsplat(x[0]), vsplat(x[1])
    a0, a1, a2, a3 = vsplat(x[2]), vsplat(x[3]), vsplat(x[4]), vsplat(x[5])
    a4, a5, a6, a7 = vsplat(x[6]), vsplat(x[7]), vsplat(x[8]), vsplat(x[9])
    a8, a9, a10, a11 = vsplat(x[10]), vsplat(x[11]), vsplat(x[12]), vsplat(x[13])
    for _ in range(iters):
        a0, a1, a2, a3 = vfma(a0, b, c), vfma(a1, b, c), vfma(a2, b, c), vfma(a3, b, c)
        a4, a5, a6, a7 = vfma(a4, b, c), vfma(a5, b, c), vfma(a6, b, c), vfma(a7, b, c)
        a8, a9, a10, a11 = vfma(a8, b, c), vfma(a9, b, c), vfma(a10, b, c), vfma(a11, b, c)
    s = vadd(vadd(vadd(a0, a1), vadd(a2, a3)), vadd(vadd(a4, a5), vadd(a6, a7)))
    vstore(out, 0, vadd(s, vadd(vadd(a8, a9), vadd(a10, a11))))


@njit(cache=True, nogil=True)
def fma_chains6_into(x, iters, out):
    # x (14,) float32: b, c and the chains' starts (the first 6 used)   ->   out (L,) = the sum of 6
    # chains after `iters` steps of a = a * b + c each (2 * 16 * 6 FLOP per step)
    b, c = vsplat(x[0]), vsplat(x[1])
    a0, a1, a2, a3, a4, a5 = vsplat(x[2]), vsplat(x[3]), vsplat(x[4]), vsplat(x[5]), vsplat(x[6]), vsplat(x[7])
    for _ in range(iters):
        a0, a1, a2, a3, a4, a5 = vfma(a0, b, c), vfma(a1, b, c), vfma(a2, b, c), vfma(a3, b, c), vfma(a4, b, c), \
            vfma(a5, b, c)
    vstore(out, 0, vadd(vadd(vadd(a0, a1), vadd(a2, a3)), vadd(a4, a5)))


def chain_inputs() -> np.ndarray:
    """b = 0.999 and c = 0.001 (every chain converges to 1: no overflow, no subnormals), 12 starts."""
    return np.array([0.999, 0.001] + [0.5 + 0.01 * k for k in range(CHAINS)], np.float32)   # (14,)


def fma_peak_gflops(threads: int, seconds: float = 0.15, repeats: int = 3) -> float:
    """GFLOP/s of `threads` threads each running an FMA probe at once (started together at a
    barrier, one kernel call each: threads.run's hand-out could give two calls to one thread), the
    best of `repeats` runs of about `seconds` each, for each probe (12 and 6 chains), the best of all."""
    x = chain_inputs()
    return max(_probe_gflops(kernel, chains, x, threads, seconds, repeats)
               for kernel, chains in ((fma_chains_into, CHAINS), (fma_chains6_into, 6)))


def _probe_gflops(kernel, chains, x, threads, seconds, repeats):
    outs = np.zeros((threads, LANES), np.float32)                    # (T, L)
    kernel(x, 10, outs[0])                                            # compile or load, warm up
    iters = 100_000
    t = time.perf_counter()
    kernel(x, iters, outs[0])
    per_iter = max(time.perf_counter() - t, 1e-9) / iters
    iters = max(1000, int(seconds / per_iter))
    best = 0.0
    for _ in range(repeats):
        start = threading.Barrier(threads + 1)
        pool = [threading.Thread(target=_one, args=(kernel, start, x, iters, outs[j])) for j in range(threads)]
        for th in pool:
            th.start()
        start.wait()
        t = time.perf_counter()
        for th in pool:
            th.join()
        best = max(best, 2 * LANES * chains * iters * threads / (time.perf_counter() - t) / 1e9)
    return best


def _one(kernel, start, x, iters, out):
    start.wait()
    kernel(x, iters, out)
