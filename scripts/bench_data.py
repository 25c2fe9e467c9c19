"""Data side of training speed: dataset-cache load rate, first decode with 1 vs 2 workers, and the
epoch time of real training (cnncli.train) against `cnn bench` at the same batch size.

Generates the demo dataset (default 600 train images per class, 12 classes) in a temp dir with a
private dataset cache (CNNCLI_CACHE_DIR). Prints numbers and ratios against the targets
(cache load >= 50k images/s; training within 10% of `cnn bench`); asserts nothing.

Training vs bench alternates at the grain of steps: after every --every steps of cnncli.train, as
many steps of the bench's training loop (cnncli.bench: Network.train_step + Adam on random batches,
same batch size and threads) run inside the same process, timed apart; each epoch's training rate
is its images over its training time with the bench's time taken out. So both see the same drift
of this shared machine (alternating whole ~1 s epochs, single epochs swung by up to a third).
Epoch 1 (warm-up: first workspaces, kernel loading) is left out of the comparison, which is of the
medians over the other epochs.

    .venv/bin/python scripts/bench_data.py [--per-class 600] [--epochs 5] [--batch-size 64] [--every 10]
        [--batchnorm none]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

CACHE_TARGET = 50_000      # images/s
TRAIN_TOLERANCE = 0.10     # real training within 10% of `cnn bench`


def rate_line(name, n, seconds) -> str:
    return f"{name:44s} {n / seconds:>10,.0f} images/s  ({n} images in {seconds:.3f}s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=600, help="training images per class (12 classes)")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs (all but the first are compared)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--batchnorm", default="none", choices=("none", "unit", "channel"),
                    help="the network variant of both the training and the bench")
    ap.add_argument("--no-augment", action="store_true", help="train with augment.enabled=false (the default "
                    "config augments every batch, which the bench's loop does not)")
    ap.add_argument("--repeats", type=int, default=3, help="cache loads are timed this many +2 times")
    ap.add_argument("--every", type=int, default=10, help="training steps between blocks of as many bench steps")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cnncli-data-bench-"))
    os.environ["CNNCLI_CACHE_DIR"] = str(tmp / "cache")  # before cnncli.data reads it
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    from cnncli import data
    from cnncli.demo import generate_demo

    t0 = time.perf_counter()
    generate_demo(tmp / "demo", train_per_class=args.per_class, test_per_class=max(args.per_class // 4, 1))
    train_dir = tmp / "demo" / "train"
    print(f"generated {train_dir} in {time.perf_counter() - t0:.1f}s "
          f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}, cores {os.cpu_count()})")

    # first decode (no cache), 1 vs 2 workers
    decode = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        ds, _ = data.load_folder(train_dir, workers=workers, cache=False)
        decode[workers] = time.perf_counter() - t0
        print(rate_line(f"first decode, workers={workers}", len(ds.labels), decode[workers]))
    print(f"{'  2 workers vs 1':44s} {decode[1] / decode[2]:>10.2f}x faster")

    # cache: one load writes it, then timed loads read it
    t0 = time.perf_counter()
    ds, _ = data.load_folder(train_dir, cache=True)
    print(rate_line("decode + write cache", len(ds.labels), time.perf_counter() - t0))
    loads = []
    for _ in range(args.repeats + 2):
        t0 = time.perf_counter()
        ds, _ = data.load_folder(train_dir, cache=True)
        loads.append(time.perf_counter() - t0)
    med = statistics.median(loads)
    print(rate_line(f"cached load (median of {len(loads)})", len(ds.labels), med))
    rate = len(ds.labels) / med
    print(f"{'  target >= 50,000 images/s':44s} {'met' if rate >= CACHE_TARGET else 'MISSED'} "
          f"({rate / CACHE_TARGET:.2f} of target)")

    # real training vs the core alone, alternating
    train_rates, bench_rates = train_vs_bench(args, tmp, train_dir)
    for i, (r, b) in enumerate(zip(train_rates, bench_rates), 1):
        print(f"epoch {i}: cnncli.train {r:>8,.0f} images/s, bench between its steps {b:>8,.0f} images/s  ({r / b:.2f})"
              + ("  (warm-up, not compared)" if i == 1 else ""))
    if len(train_rates) < 2:
        print("  (one epoch only: nothing to compare; use --epochs 3 or more)")
        return
    real, core = statistics.median(train_rates[1:]), statistics.median(bench_rates[1:])
    gap = 1 - real / core
    print(f"{'  median real vs median bench, epochs 2+':44s} {real / core:>10.2f}  (gap {gap:+.1%}; target gap <= "
          f"{TRAIN_TOLERANCE:.0%}: {'met' if gap <= TRAIN_TOLERANCE else 'MISSED'})")


def train_vs_bench(args, tmp: Path, train_dir: Path):
    """Run cnncli.train on the generated folder with a block of --every bench steps after every
    --every of its steps. Returns (training images/s per epoch, its bench time taken out; bench
    images/s in that epoch)."""
    from cnncli import config as config_mod
    from cnncli import train as train_mod
    from cnncli.bench import Ours, images_per_second, random_batches
    from cnncli.machine import using_threads
    from cnncli.train import train

    cfg = config_mod.load_config(None, [
        f"data.train={train_dir}", f"data.val={tmp / 'demo' / 'test'}", f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", f"train.threads={args.threads}", "train.checkpoint_every=0",
        f"out={tmp / 'run'}", f"augment.enabled={'false' if args.no_augment else 'true'}",
        f"model.batchnorm={args.batchnorm}",
    ])
    ours = Ours(12, args.batchnorm)
    batches = random_batches(args.batch_size, 12)
    with using_threads(args.threads):
        images_per_second(ours.train, batches, 0.5)                  # the bench's own warm-up, before training starts
    train_rates, bench_rates = [], []
    block = {"seconds": 0.0, "images": 0, "steps": 0}               # the bench's share of the current epoch
    step, end = train_mod.Trainer.train_step, train_mod.Trainer.end_epoch

    def train_step(self, idx):
        step(self, idx)
        block["steps"] += 1
        if block["steps"] % args.every == 0:
            t0 = time.perf_counter()
            for k in range(args.every):
                x, y = batches[k % len(batches)]
                ours.train(x, y)
            block["seconds"] += time.perf_counter() - t0
            block["images"] += args.every * args.batch_size

    def end_epoch(self, t_epoch, images):
        train_rates.append(images / (time.perf_counter() - t_epoch - block["seconds"]))
        bench_rates.append(block["images"] / block["seconds"] if block["seconds"] else float("nan"))
        block.update(seconds=0.0, images=0)
        return end(self, t_epoch, images)

    train_mod.Trainer.train_step, train_mod.Trainer.end_epoch = train_step, end_epoch
    try:
        train(cfg, quiet=True, echo=lambda line: None)
    finally:
        train_mod.Trainer.train_step, train_mod.Trainer.end_epoch = step, end
    if len(train_rates) != args.epochs:
        sys.exit("the run did not finish its epochs")
    return train_rates, bench_rates


if __name__ == "__main__":
    main()
