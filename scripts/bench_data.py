"""Data side of training speed: dataset-cache load rate, first decode with 1 vs 2 workers, and the
epoch time of real training (cnncli.train) against `cnn bench` at the same batch size.

Generates the demo dataset (default 600 train images per class, 12 classes) in a temp dir with a
private dataset cache (CNNCLI_CACHE_DIR). Prints numbers and ratios against the targets
(cache load >= 50k images/s; training within 10% of `cnn bench`); asserts nothing.

    .venv/bin/python scripts/bench_data.py [--per-class 600] [--epochs 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
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
    ap.add_argument("--epochs", type=int, default=2, help="training epochs (the last one is compared)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--seconds", type=float, default=2.0, help="cnn bench: seconds per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="cnn bench repeats; cache loads timed this many +2 times")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cnncli-data-bench-"))
    os.environ["CNNCLI_CACHE_DIR"] = str(tmp / "cache")  # before cnncli.data reads it
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    from cnncli import data
    from cnncli.bench import run_bench
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

    # real training vs the core alone
    train_rates, epoch_times = train_epochs(args, tmp, train_dir)
    res = run_bench(batch_sizes=[args.batch_size], threads=args.threads, seconds=args.seconds,
                    repeats=args.repeats, echo=lambda s: None)
    row = next(r for r in res["rows"] if r["mode"] == "train")
    bench_rate = row["ours"]["median"]
    last = train_rates[-1]
    print(f"cnn bench train, batch {args.batch_size:<4d}                {bench_rate:>10,.0f} images/s "
          f"(min {row['ours']['min']:,.0f}, max {row['ours']['max']:,.0f})")
    for i, (r, t) in enumerate(zip(train_rates, epoch_times), 1):
        print(f"cnncli.train epoch {i}: training part            {r:>10,.0f} images/s  "
              f"(epoch incl. validation {t:.2f}s)")
    gap = 1 - last / bench_rate
    print(f"{'  last epoch vs cnn bench':44s} {last / bench_rate:>10.2f}  (gap {gap:+.1%}; target gap <= "
          f"{TRAIN_TOLERANCE:.0%}: {'met' if gap <= TRAIN_TOLERANCE else 'MISSED'})")


def train_epochs(args, tmp: Path, train_dir: Path):
    """Run cnncli.train on the generated folder; (training images/s per epoch, epoch seconds) from its log."""
    from cnncli import config as config_mod
    from cnncli.train import train

    cfg = config_mod.load_config(None, [
        f"data.train={train_dir}", f"data.val={tmp / 'demo' / 'test'}", f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", f"train.threads={args.threads}", "train.checkpoint_every=0",
        f"out={tmp / 'run'}",
    ])
    lines = []
    train(cfg, quiet=True, echo=lines.append)
    rates = [float(m.group(1)) for m in (re.search(r"\((\d+) img/s\)", s) for s in lines) if m]
    with open(tmp / "run" / "metrics.csv", newline="") as f:
        times = [float(row["time_s"]) for row in csv.DictReader(f)]
    if len(rates) != args.epochs:
        sys.exit("could not read the epoch rates from the training log:\n" + "\n".join(lines))
    return rates, times


if __name__ == "__main__":
    main()
