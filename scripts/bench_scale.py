"""The data path at scale: folders of 10k, 100k (and, on request, 1M) 32x32 PNGs, made of hard links
to a few thousand distinct files in a temp dir, with a private dataset cache.

For each size it prints the first decode time (every core; at the smallest size also 1 worker, for
the speedup), the cached load (scan + memory map, then reading every pixel: GB/s), and the peak RSS
of `cnn train` (1 epoch), `cnn eval` and `cnn predict` on the folder, each in a fresh process
(ru_maxrss of children), against the budget of pixel bytes + 400 MB; plus time per image, to show
linearity. Prints numbers; asserts nothing.

    .venv/bin/python scripts/bench_scale.py [--sizes 10k,100k] [--distinct 3000] [--classes 4]
        [--tmp DIR [--reuse]]

--reuse keeps the size folders (and their dataset cache) in --tmp, takes the ones already there
without a first decode, and skips the 1-worker decode, so the peak RSS of the commands at 1M can be measured again in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

BUDGET_MB = 400

LOAD = r"""
import json, sys, time
import numpy as np
from cnncli import data
root, workers, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
t0 = time.perf_counter()
ds, skipped = data.load_folder(root, workers=workers or None, cache=cache, progress=False)
t1 = time.perf_counter()
total = 0
for a in range(0, len(ds), 65536):                  # touch every pixel
    total += int(np.add.reduce(ds.images[a:a + 65536], axis=None, dtype=np.uint64))
t2 = time.perf_counter()
print(json.dumps({"n": len(ds), "load_s": t1 - t0, "read_s": t2 - t1, "bytes": ds.images.nbytes}))
"""

MAXRSS = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); " \
         "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s.rstrip("km")) * mult)


def make_sources(folder, distinct, classes, keep_existing=False):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    paths = []
    for i in range(distinct):
        c = i % classes
        img = Image.new("L", (32, 32), int(rng.integers(0, 60)))
        d = ImageDraw.Draw(img)
        r = int(rng.integers(6, 12))
        x, y = rng.integers(10, 22, 2)
        box = [x - r, y - r, x + r, y + r]
        [d.ellipse, d.rectangle, d.line, d.polygon][c % 4]([(x - r, y - r), (x + r, y + r), (x - r, y + r)] if c % 4 == 3 else box, fill=int(rng.integers(150, 256)))
        p = os.path.join(folder, f"{i:05d}.png")
        if not (keep_existing and os.path.exists(p)):     # rewriting would change the links' cache key
            img.save(p)
        paths.append((c, p))
    return paths


def make_folder(root, n, sources, classes):
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
    for i in range(n):
        c, src = sources[i % len(sources)]
        os.link(src, os.path.join(root, f"class{c}", f"{i:07d}.png"))


def child(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:4])}...\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def peak_mb(cmd, env):
    t0 = time.perf_counter()
    code, kib = child([sys.executable, "-c", MAXRSS] + cmd, env).split()
    return int(kib) / 1024.0, time.perf_counter() - t0, int(code)


def run_size(n, tmp, sources, classes, env, serial, reuse=False):
    root = os.path.join(tmp, f"n{n}")
    first_time = not (reuse and os.path.isdir(root))
    if first_time:
        make_folder(root, n, sources, classes)
    serial = serial and not reuse                     # the quick re-measure mode skips the 1-worker decode
    if serial:
        one = json.loads(child_load(root, 1, False, env))
    first = json.loads(child_load(root, 0, True, env)) if first_time else None
    cached = json.loads(child_load(root, 0, True, env))
    pix = cached["bytes"]
    budget = pix / 2**20 + BUDGET_MB
    print(f"\n== {n:,} images ({pix / 1e6:.1f} MB of pixels; budget {budget:.0f} MB peak RSS)")
    if first is not None:
        print(f"first decode, {len(os.sched_getaffinity(0))} workers: {first['load_s']:.1f} s "
              f"({first['load_s'] / n * 1e6:.0f} us/image)")
    if serial:
        print(f"first decode, 1 worker:  {one['load_s']:.1f} s -> speedup {one['load_s'] / first['load_s']:.2f}x")
    rate = pix / 1e9 / cached["read_s"]
    print(f"cached load: scan+map {cached['load_s']:.2f} s ({cached['load_s'] / n * 1e6:.1f} us/image), "
          f"read every pixel {cached['read_s']:.3f} s = {rate:.2f} GB/s; "
          f"total {pix / 1e9 / (cached['load_s'] + cached['read_s']):.2f} GB/s")
    run = os.path.join(tmp, f"run{n}")
    shutil.rmtree(run, ignore_errors=True)            # a kept --tmp: train into the same folder again
    cmds = {"train (1 epoch)": ["cnn", "train", "--set", f"data.train={root}", "--set", "train.epochs=1",
                                "--set", "train.batch_size=128", "--no-report", "--out", run, "-q"],
            "eval": ["cnn", "eval", "--checkpoint", run, "--data", root],
            "predict": ["cnn", "predict", "--checkpoint", run, root]}
    for name, cmd in cmds.items():
        mb, secs, code = peak_mb(cmd, env)
        verdict = "OK" if mb <= budget else "OVER"
        print(f"{name:16s} peak RSS {mb:8.0f} MB  ({mb / budget:.2f} of budget, {verdict}); "
              f"{secs:.1f} s, {secs / n * 1e6:.0f} us/image; exit {code}")
    if not reuse:                                     # --reuse keeps the folder for the next run
        shutil.rmtree(root, ignore_errors=True)


def child_load(root, workers, cache, env):
    return child([sys.executable, "-c", LOAD, root, str(workers), "1" if cache else "0"], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k", help="comma-separated folder sizes, e.g. 10k,100k,1M")
    ap.add_argument("--distinct", type=int, default=3000, help="distinct PNG files the links point to")
    ap.add_argument("--classes", type=int, default=4, help="class subfolders")
    ap.add_argument("--tmp", default=None, help="work folder (default: a new temp dir, removed after)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --tmp: use (and keep) the size folders and dataset cache already there; no first decode")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    tmp = args.tmp or tempfile.mkdtemp(prefix="cnncli-scale-")
    env = dict(os.environ, CNNCLI_CACHE_DIR=os.path.join(tmp, "cache"))
    print(f"cores for this process: {len(os.sched_getaffinity(0))}; work folder {tmp}")
    try:
        os.makedirs(os.path.join(tmp, "src"), exist_ok=True)
        sources = make_sources(os.path.join(tmp, "src"), args.distinct, args.classes, keep_existing=args.reuse)
        for k, n in enumerate(sizes):
            run_size(n, tmp, sources, args.classes, env, serial=(k == 0), reuse=args.reuse and args.tmp is not None)
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
