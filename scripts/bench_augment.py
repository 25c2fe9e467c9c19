"""Augmentation cost as a fraction of a training step (issue 15's goal: <= 10% at batch 64).

Times Network.train_step and Augmenter.__call__ (the config's default augment settings, or --set
ones) on the same batch of demo-like images, alternated: each repeat runs --steps of one then --steps
of the other, and the ratio is of the medians over repeats. The augmenter's draw (parameters and
noise from (seed, epoch, step)) is part of its time. Prints numbers; asserts nothing.

    python scripts/bench_augment.py [--batch-size 64] [--repeats 15] [--steps 20] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

GOAL = 0.10


def make_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.uniform(-1.0, 0.0, size=(n, 1, 1, 1)), 32 * 32).reshape(n, 1, 32, 32)
    x[:, :, 8:24, 6:26] += (rng.random((n, 1, 16, 20)) < 0.4) * 2.5   # strokes on a flat background
    return np.ascontiguousarray(x, dtype=np.float32)


def timed(fn, steps):
    t = time.perf_counter()
    for s in range(steps):
        fn(s)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64, help="images per batch")
    ap.add_argument("--repeats", type=int, default=15, help="alternated repeats (median reported)")
    ap.add_argument("--steps", type=int, default=20, help="calls per repeat")
    ap.add_argument("--threads", type=int, default=0, help="numba threads, 0 = all cores")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the augment settings, e.g. augment.erase.p=0.5")
    args = ap.parse_args()

    from cnncli import config
    from cnncli.augment import Augmenter, AugmentSettings
    from cnncli.kernels import set_threads
    from cnncli.model import Network

    threads = set_threads(args.threads)
    cfg = config.load_config(None, args.overrides)
    settings = AugmentSettings.from_config(cfg["augment"])
    n = args.batch_size
    x = make_batch(n)
    y = np.arange(n) % 12
    net = Network(num_classes=12)
    aug = Augmenter(settings, seed=0, pixel_std=0.3, max_batch=n)
    net.train_step(x, y), aug(x, 0, 0)  # compile / load kernels, first workspaces
    step_t, aug_t = [], []
    for r in range(args.repeats):
        step_t.append(timed(lambda s: net.train_step(x, y), args.steps))
        aug_t.append(timed(lambda s: aug(x, r, s), args.steps))
    ms = lambda v: f"{statistics.median(v) * 1e3:.3f} ms (min {min(v) * 1e3:.3f}, max {max(v) * 1e3:.3f})"  # noqa: E731
    ratio = statistics.median(aug_t) / statistics.median(step_t)
    print(f"settings: {settings}")
    print(f"batch {n}, {threads} thread(s), {args.repeats} repeats x {args.steps} calls, alternated")
    print(f"train_step  {ms(step_t)}")
    print(f"augment     {ms(aug_t)}")
    print(f"augment / train_step = {ratio:.1%} (goal <= {GOAL:.0%}: {'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
