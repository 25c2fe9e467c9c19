"""Start-up cost: whole-process time of a warm `cnn predict one.png`, and of `import cnncli.cli`.

Builds a throw-away checkpoint (1 epoch of `cnn train` on a tiny generated folder in a temp dir),
runs one warm-up predict (fills numba's on-disk cache), then times fresh processes (median of 5)
against the 0.5 s target, plus a per-phase breakdown of one process. Prints numbers; asserts nothing.

    .venv/bin/python scripts/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5

BREAKDOWN = r"""
import json, sys, time
t = [time.perf_counter()]
import cnncli.cli; t.append(time.perf_counter())
import numpy; t.append(time.perf_counter())
import numba; t.append(time.perf_counter())
import cnncli.model; t.append(time.perf_counter())
from cnncli.predictor import Predictor; t.append(time.perf_counter())
p = Predictor.from_checkpoint(sys.argv[1]); t.append(time.perf_counter())
from cnncli.data import load_image; t.append(time.perf_counter())
img = load_image(sys.argv[2])[None]; t.append(time.perf_counter())
p.predict_proba(img); t.append(time.perf_counter())
p.predict_proba(img); t.append(time.perf_counter())
names = ["import cnncli.cli", "import numpy", "import numba", "import cnncli.model (kernels)",
         "import predictor", "load checkpoint + build Network", "import data (PIL)", "decode one image",
         "first predict (numba cache load)", "second predict"]
print(json.dumps({n: t[i + 1] - t[i] for i, n in enumerate(names)}))
"""


def cnn_command() -> list:
    exe = Path(sys.executable).with_name("cnn")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cnncli"]


def timed(cmd, env) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def summary(values) -> str:
    return f"median {statistics.median(values):.3f}s (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def make_checkpoint(tmp: Path, env) -> tuple[Path, Path]:
    from cnncli.demo import generate_demo

    generate_demo(tmp / "data", train_per_class=8, test_per_class=1, seed=0)
    run = tmp / "run"
    cmd = cnn_command() + ["train", "--set", f"data.train={tmp / 'data' / 'train'}",
                           "--set", f"data.val={tmp / 'data' / 'test'}", "--set", "train.epochs=1",
                           "--set", "train.batch_size=16", "--out", str(run), "--no-report", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"cnn train failed ({proc.returncode}):\n{proc.stderr}")
    image = sorted((tmp / "data" / "test").glob("*/*.png"))[0]
    return run, image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cnncli-startup-"))
    env = dict(os.environ, CNNCLI_CACHE_DIR=str(tmp / "cache"))
    try:
        run, image = make_checkpoint(tmp, env)
        predict = cnn_command() + ["predict", "--checkpoint", str(run), str(image)]
        timed(predict, env)  # warm-up: fills numba's cache if it was cold
        t_predict = [timed(predict, env) for _ in range(args.runs)]
        t_import = [timed([sys.executable, "-c", "import cnncli.cli"], env) for _ in range(args.runs)]
        t_python = [timed([sys.executable, "-c", "pass"], env) for _ in range(args.runs)]
        t_help = [timed(cnn_command() + ["--help"], env) for _ in range(args.runs)]
        proc = subprocess.run([sys.executable, "-c", BREAKDOWN, str(run / "best.npz"), str(image)],
                              env=env, capture_output=True, text=True, check=True)
        phases = json.loads(proc.stdout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median(t_predict)
    print(f"python -c pass                  {summary(t_python)}")
    print(f"python -c 'import cnncli.cli'   {summary(t_import)}")
    print(f"cnn --help                      {summary(t_help)}")
    print(f"cnn predict one.png (warm)      {summary(t_predict)}")
    print(f"  target {TARGET_S}s: {'met' if med <= TARGET_S else 'MISSED'} "
          f"(median / target = {med / TARGET_S:.2f})")
    print("one warm `predict` process, phase by phase (in-process perf_counter):")
    for name, sec in phases.items():
        print(f"  {name:36s} {sec * 1000:8.1f} ms")
    print(f"  {'sum':36s} {sum(phases.values()) * 1000:8.1f} ms")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}")


if __name__ == "__main__":
    main()
