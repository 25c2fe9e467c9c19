"""Per-unit against per-channel BN, segment by segment of the one-call BN step (kernels/bnstep.py's
clock marks), the two networks training alternately step by step in one process, so a shared
machine's slow seconds fall on both alike.

    python scripts/bn_segments_ab.py [--batch 128] [--steps 300] [--threads 2]

Prints each segment's median span (first thread's start to last thread's end, us) for both
variants and their difference, and the median train_step + Adam time. A developer's breakdown
(where per-unit BN's premium sits), not a benchmark of record (cnn bench --compare-bn).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cnncli.bench import Ours, images_per_second, random_batches
from cnncli.kernels import bnstep
from cnncli.kernels.sync import cycle_rate
from cnncli.machine import using_threads

VARIANTS = ("unit", "channel")


def measure(batch, steps, threads):
    """({variant: (K,) median span per segment, seconds}, {variant: median step seconds})."""
    rate, real, clock = cycle_rate(), bnstep.bn_step_into, []
    if rate <= 0:
        raise SystemExit("no time-stamp counter: the step's segments cannot be timed here")

    def step(*args):
        clock[:] = [args[-1]]                      # (Tc,2,K) the job's marks
        return real(*args)

    spans, totals = {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
    with using_threads(threads):
        nets, batches = {v: Ours(12, v) for v in VARIANTS}, random_batches(batch, 12)
        for net in nets.values():
            images_per_second(net.train, batches, 0.5)
        bnstep.bn_step_into = step
        try:
            for i in range(steps):
                for v, net in nets.items():
                    t0 = time.perf_counter()
                    net.train(*batches[i % len(batches)])
                    totals[v].append(time.perf_counter() - t0)
                    c = clock[0]
                    ran = c[:, 1, 0] != 0                                  # the threads that ran it
                    spans[v].append((c[ran, 0, :].max(0) - c[ran, 1, :].min(0)) / rate)
                    c[...] = 0
        finally:
            bnstep.bn_step_into = real
    return ({v: np.median(np.array(s), 0) for v, s in spans.items()},
            {v: float(np.median(t)) for v, t in totals.items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128, help="batch size")
    ap.add_argument("--steps", type=int, default=300, help="steps of each variant")
    ap.add_argument("--threads", type=int, default=2, help="threads (0 = all cores)")
    a = ap.parse_args()
    med, total = measure(a.batch, a.steps, a.threads)
    u, c = med["unit"] * 1e6, med["channel"] * 1e6
    print(f"batch {a.batch}, {a.threads} thread(s), {a.steps} steps each: median step "
          f"{total['unit'] * 1e3:.3f} ms per unit, {total['channel'] * 1e3:.3f} ms per channel")
    print(f"{'segment (us, median span)':58s} {'unit':>8s} {'channel':>8s} {'diff':>8s}")
    for k, name in enumerate(bnstep.SEGMENTS):
        print(f"{name[:58]:58s} {u[k]:8.1f} {c[k]:8.1f} {u[k] - c[k]:+8.1f}")
    print(f"{'all segments':58s} {u.sum():8.1f} {c.sum():8.1f} {u.sum() - c.sum():+8.1f}")


if __name__ == "__main__":
    main()
