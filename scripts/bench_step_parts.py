#!/usr/bin/env python
"""Where a no-BN training step's time goes around its numba call: the one-call step alone
(plainstep.plain_step_into on every thread), Network.train_step (its checks, the plan, the loss's
tree, Python), and train_step + Adam (what `cnn bench` times), alternating call by call.

    python scripts/bench_step_parts.py [--threads 2] [--batch 128] [--steps 100]

Prints min / 25th percentile / median wall time per call of each, in ms. Prints numbers; asserts
nothing. A diagnostic, not a benchmark: the raw call repeats one batch without a transform.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="worker threads (0 = all cores)")
    ap.add_argument("--batch", type=int, default=128, help="images per step")
    ap.add_argument("--steps", type=int, default=100, help="calls of each kind")
    args = ap.parse_args()

    from cnncli import shards
    from cnncli.kernels import plainstep
    from cnncli.kernels.augment_draw import GIVEN
    from cnncli.kernels.threads import run_together
    from cnncli.machine import using_threads
    from cnncli.model import Network
    from cnncli.optim import Optimizer

    rng = np.random.default_rng(0)
    B = args.batch
    net = Network(batchnorm="none", seed=1)
    opt = Optimizer("adam", net.params.flat.size, 1e-3)
    x = rng.standard_normal((B, 1, 32, 32)).astype(np.float32)                  # (B,1,32,32)
    y = rng.integers(0, 12, B)
    with using_threads(args.threads):
        net.train_step(x, y)                                                     # compile or load, plan
        plan = net._plan(B)
        arrays = shards._plainstep_arrays(net, plan)
        no_input = (GIVEN,) + shards._no_input(plan)
        weights, labels = np.ones(B), y.astype(np.int64)

        def one_call():
            plan.sync[:] = 0
            run_together(lambda t: plainstep.plain_step_into(plan.sync, t, no_input[0], plan.bounds, True, x,
                                                             labels, weights, 1.0 / B, *no_input[1:], *arrays), abort=lambda: None)

        def train_step():
            net.train_step(x, y)

        def with_adam():
            net.train_step(x, y)
            opt.step(net.params.flat, net.grads.flat, 1e-3)

        parts = {"one-call step": one_call, "train_step": train_step, "train_step + Adam": with_adam}
        times = {name: [] for name in parts}
        for _ in range(args.steps):
            for name, fn in parts.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    print(f"batch {B}, {args.threads} thread(s), {args.steps} calls each, alternating:")
    for name, v in times.items():
        v = np.array(v) * 1e3
        print(f"  {name:18s} min {v.min():.3f}  p25 {np.percentile(v, 25):.3f}  median {np.median(v):.3f} ms")


if __name__ == "__main__":
    main()
