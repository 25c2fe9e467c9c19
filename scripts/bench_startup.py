"""Start-up cost: whole-process time of a warm `cnn predict one.png`, and of `import cnncli.cli`.

Builds a throw-away checkpoint (1 epoch of `cnn train` on a tiny generated folder in a temp dir),
runs one warm-up predict, then times fresh processes (median of --runs) against the 0.5 s target,
plus a per-phase breakdown of one process (median per phase over --runs processes): the NumPy path
that `cnn predict` takes for a few images, then what the numba path would add on top of it.
`--crossover 1024,4096,8192` also times, in fresh processes, predicting N images with the NumPy
path vs the numba path (import + kernel cache load + run): the measurement behind
predictor.NUMPY_MAX_IMAGES. Prints numbers; asserts nothing.

    .venv/bin/python scripts/bench_startup.py [--runs 5] [--crossover 1024,4096,8192]
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

# One process doing what `cnn predict one.png` does, phase by phase; then, not part of that command,
# what the numba fast path adds (the phases after "second predict (numpy)").
BREAKDOWN = r"""
import json, sys, time
t = [time.perf_counter()]
import cnncli.cli; t.append(time.perf_counter())
import numpy; t.append(time.perf_counter())
from cnncli.predictor import Predictor; t.append(time.perf_counter())
p = Predictor.from_checkpoint(sys.argv[1]); t.append(time.perf_counter())
from cnncli.data import load_image; t.append(time.perf_counter())
img = load_image(sys.argv[2])[None]; t.append(time.perf_counter())
p.predict_proba(img); t.append(time.perf_counter())
p.predict_proba(img); t.append(time.perf_counter())
numba_loaded = "numba" in sys.modules
import numba; t.append(time.perf_counter())
p.network; t.append(time.perf_counter())
p.predict_proba(img, fast=True); t.append(time.perf_counter())
p.predict_proba(img, fast=True); t.append(time.perf_counter())
names = ["import cnncli.cli", "import numpy", "import predictor (+ infer, arch, checkpoint)",
         "load + check checkpoint", "import cnncli.data", "decode one image (imports PIL)", "first predict (numpy)",
         "second predict (numpy)",
         "import numba", "import cnncli.model + build Network", "first predict (numba cache load)",
         "second predict (numba)"]
print(json.dumps({"phases": {n: t[i + 1] - t[i] for i, n in enumerate(names)}, "numba_loaded": numba_loaded}))
"""
NUMPY_PHASES = 8    # the first 8 phases are the `cnn predict one.png` path

# Fresh process, numpy already imported: time to predict n images by one path, including the
# path's own imports (and, for numba, building the Network and loading the kernel cache).
CROSSOVER = r"""
import json, sys, time
import numpy as np
from cnncli import arch
path, n, bn = sys.argv[1], int(sys.argv[2]), sys.argv[3]
params = arch.init_params(12, bn, seed=1, dtype=np.float32)
buffers = arch.init_buffers(12, bn, dtype=np.float32)
x = np.random.default_rng(0).standard_normal((n, 1, 32, 32)).astype(np.float32)
t0 = time.perf_counter()
if path == "numba":
    from cnncli import model
    net = model.Network(12, bn, dtype=np.float32)
    net.load_arrays(params, buffers)
    run = net.predict_proba
else:
    from cnncli import infer
    run = lambda x: infer.predict_proba(params, x, bn, buffers=buffers)
t1 = time.perf_counter()
run(x)
t2 = time.perf_counter()
run(x)
t3 = time.perf_counter()
print(json.dumps({"total": t2 - t0, "setup": t1 - t0, "warm": t3 - t2}))
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
    ap.add_argument("--crossover", default="", metavar="N,N,...",
                    help="also time N images by the numpy vs the numba path in fresh processes")
    ap.add_argument("--batchnorm", default="none", choices=("none", "unit", "channel"),
                    help="network variant of --crossover (default none)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cnncli-startup-"))
    env = dict(os.environ, CNNCLI_CACHE_DIR=str(tmp / "cache"))
    # The same with Python's bytecode cache on (into the temp dir, not the source tree), as for an
    # installed package: with PYTHONDONTWRITEBYTECODE=1 (set in some dev shells) every cnncli module
    # is compiled from source in every process.
    env_pyc = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env_pyc["PYTHONPYCACHEPREFIX"] = str(tmp / "pyc")
    load = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        run, image = make_checkpoint(tmp, env)
        predict = cnn_command() + ["predict", "--checkpoint", str(run), str(image)]
        timed(predict, env)  # warm-up: fills numba's cache if it was cold
        timed(predict, env_pyc)  # warm-up: fills the bytecode cache
        t_predict = [timed(predict, env) for _ in range(args.runs)]
        t_predict_pyc = [timed(predict, env_pyc) for _ in range(args.runs)]
        t_import = [timed([sys.executable, "-c", "import cnncli.cli"], env) for _ in range(args.runs)]
        t_python = [timed([sys.executable, "-c", "pass"], env) for _ in range(args.runs)]
        t_help = [timed(cnn_command() + ["--help"], env) for _ in range(args.runs)]
        runs = [json.loads(subprocess.run([sys.executable, "-c", BREAKDOWN, str(run / "best.npz"), str(image)],
                                          env=env, capture_output=True, text=True, check=True).stdout)
                for _ in range(args.runs)]
        phases = {name: statistics.median(r["phases"][name] for r in runs) for name in runs[0]["phases"]}
        numba_early = any(r["numba_loaded"] for r in runs)
        crossover = {}
        for _ in range(args.runs if args.crossover else 0):
            for n in [int(v) for v in args.crossover.split(",") if v.strip()]:
                for path in ("numpy", "numba"):
                    proc = subprocess.run([sys.executable, "-c", CROSSOVER, path, str(n), args.batchnorm],
                                          env=env, capture_output=True, text=True, check=True)
                    crossover.setdefault((n, path), []).append(json.loads(proc.stdout))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median(t_predict)
    print(f"{started}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start, "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end; "
          f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}")
    print(f"python -c pass                  {summary(t_python)}")
    print(f"python -c 'import cnncli.cli'   {summary(t_import)}")
    print(f"cnn --help                      {summary(t_help)}")
    print(f"cnn predict one.png (warm)      {summary(t_predict)}")
    print(f"  target {TARGET_S}s: {'met' if med <= TARGET_S else 'MISSED'} "
          f"(median / target = {med / TARGET_S:.2f})")
    print(f"  with bytecode cache           {summary(t_predict_pyc)}")
    print(f"one warm `predict` process, phase by phase (in-process perf_counter, median of {args.runs}):")
    names = list(phases)
    for i, name in enumerate(names):
        if i == NUMPY_PHASES:
            print(f"  {'sum (the cnn predict path)':44s} {sum(phases[n] for n in names[:i]) * 1000:8.1f} ms")
            print("  what the numba path would add:")
        print(f"  {name:44s} {phases[name] * 1000:8.1f} ms")
    print(f"  {'sum (numba path extra)':44s} {sum(phases[n] for n in names[NUMPY_PHASES:]) * 1000:8.1f} ms")
    print(f"  numba imported by the numpy path: {'YES (regression)' if numba_early else 'no'}")
    if crossover:
        print(f"N images, fresh process after `import numpy`, batchnorm={args.batchnorm}, float32 "
              f"(median of {args.runs}; total = imports + setup + first call):")
        for (n, path), ds in sorted(crossover.items()):
            med = {k: statistics.median(d[k] for d in ds) for k in ds[0]}
            print(f"  n={n:6d} {path:5s} total {med['total'] * 1000:8.1f} ms  setup {med['setup'] * 1000:6.1f} ms"
                  f"  warm call {med['warm'] / n * 1e6:6.1f} us/image")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}")


if __name__ == "__main__":
    main()
