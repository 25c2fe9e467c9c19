"""First-run cost: `cnn train --config configs/demo.yaml` with an empty numba cache vs a warm one, and a
fresh `cnn predict one.png`.

In a temp folder, per --rounds: a cold run with the pre-compile off (CNNCLI_COMPILE_WORKERS=0, every
kernel compiles in the run's process at first use), a cold run with it on (cores - 1 workers, whatever
the load), then a warm run; each a fresh NUMBA_CACHE_DIR, the demo's 2 epochs. Prints each run's wall
time, its CPU time (with its workers'), when its first training step returned (seconds since the
process started), epoch 1 - epoch 2 (the compile cost inside the epoch), the whole compile cost (cold
wall - warm wall) and the 1-minute load average before and after (the machine may be shared). Then
times `cnn predict one.png` with an empty cache and checks that numba was not imported. Prints numbers; asserts nothing.

    python scripts/bench_first_run.py [--rounds 1] [--epochs 2] [--set model.batchnorm=channel ...]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREDICT_PROBE = ("import sys; sys.argv = ['cnn', 'predict', '--checkpoint', sys.argv[1], sys.argv[2]]\n"
                 "from cnncli.cli import cli\n"
                 "try:\n    cli(prog_name='cnn')\nexcept SystemExit:\n    pass\n"
                 "print('numba imported:', 'numba' in sys.modules)")


def load() -> float:
    return os.getloadavg()[0]


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes and their children (compile workers)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# `cnn train ARGS` in this process, printing when the first training step returned (seconds since start)
RUNNER = ("import sys, time; t0 = time.perf_counter()\n"
          "from cnncli import model\n"
          "step = model.Network.train_step\n"
          "def timed(self, *a):\n"
          "    out = step(self, *a)\n"
          "    if not hasattr(model, 'first') and self.num_classes > 2:   # not precompile's dry run\n"
          "        model.first = time.perf_counter() - t0\n"
          "        print(f'FIRST_STEP {model.first:.2f}', file=sys.stderr)\n"
          "    return out\n"
          "model.Network.train_step = timed\n"
          "from cnncli.cli import cli\n"
          "cli(sys.argv[1:], prog_name='cnn')\n")


def train(work: Path, cache: Path, out: str, epochs: int, workers=None, sets=()) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    if workers is not None:
        env["CNNCLI_COMPILE_WORKERS"] = str(workers)
    cmd = [sys.executable, "-c", RUNNER, "train", "--config", str(ROOT / "configs/demo.yaml"), "-q",
           "--set", f"train.epochs={epochs}", "--set", f"out={out}"] + [a for kv in sets for a in ("--set", kv)]
    l0, t, cpu0 = load(), time.perf_counter(), children_cpu()
    res = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
    wall = time.perf_counter() - t
    first = float(res.stderr.split("FIRST_STEP ")[1].split()[0])
    with open(work / out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    times = [float(r["time_s"]) for r in rows]
    return {"wall": wall, "cpu": children_cpu() - cpu0, "first": first, "e1_e2": times[0] - times[1],
            "load": (l0, load()), "val_loss": rows[-1]["val_loss"]}


def show(name: str, r: dict, warm=None) -> None:
    extra = f"  compile cost (wall - warm wall) {r['wall'] - warm:5.1f} s" if warm is not None else ""
    print(f"{name:22s} wall {r['wall']:5.1f} s  cpu {r['cpu']:5.1f} s  first step at {r['first']:5.1f} s  "
          f"epoch1-epoch2 {r['e1_e2']:5.1f} s{extra}  "
          f"load {r['load'][0]:.2f} -> {r['load'][1]:.2f}  last val_loss {r['val_loss']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="cold-off, cold-on, warm triples to run")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each demo run (>= 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for the timed runs (repeatable), e.g. model.batchnorm=channel")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnn-first-run-"))
    try:
        print(f"cnncli from {ROOT}, {os.cpu_count()} cores, work folder {work}")
        train(work, work / "cache-prep", "runs/prep", 2)     # makes the demo data and its dataset cache
        for i in range(args.rounds):
            off = train(work, work / f"c-off{i}", f"runs/off{i}", args.epochs, workers=0, sets=args.set)
            on = train(work, work / f"c-on{i}", f"runs/on{i}", args.epochs, workers=max(1, os.cpu_count() - 1),
                       sets=args.set)
            warm = train(work, work / f"c-on{i}", f"runs/warm{i}", args.epochs, sets=args.set)
            show("cold, pre-compile off", off, warm["wall"])
            show("cold, pre-compile on", on, warm["wall"])
            show("warm cache", warm)
        one = next((work / "data/demo/test").rglob("*.png"))
        env = dict(os.environ, NUMBA_CACHE_DIR=str(work / "c-predict"))
        l0, t = load(), time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "cnncli", "predict", "--checkpoint", "runs/prep", str(one)],
                             cwd=work, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        probe = subprocess.run([sys.executable, "-c", PREDICT_PROBE, "runs/prep", str(one)], cwd=work, env=env,
                               capture_output=True, text=True, check=True).stdout.split("\n")[-2]
        print(f"`cnn predict one.png`, empty cache  wall {wall:.2f} s  load {l0:.2f} -> {load():.2f}  "
              f"({res.stdout.strip()}; {probe})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
