"""Old vs new source trees, alternated in one session: per-step time of Network.train_step for each
variant, thread count and batch size, each tree in its own process (PYTHONPATH, its own numba cache).

    python scripts/bench_steps_ab.py --trees old=/tmp/perf-old,new=. [--cpu] [--reps 2] [--seconds 1]

Prints img/s of the best step and of the 20th-percentile step, best over the repeats, and the
load average. --cpu times the calling thread's CPU time instead of the wall clock: with 1 thread
that is all of a step's work and barely moves with the machine's load (with 2 threads it misses
the workers). A developer's A/B tool for a shared machine, not a benchmark of record (cnn bench).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(bn, threads, batches, seconds, cpu):
    import numpy as np

    from cnncli import model
    from cnncli.kernels import set_threads

    set_threads(threads)
    clock = time.thread_time if cpu else time.perf_counter
    rng, out = np.random.default_rng(0), {}
    for b in batches:
        net = model.Network(12, bn, seed=0)
        x, y = rng.standard_normal((b, 1, 32, 32)).astype(np.float32), rng.integers(0, 12, b)
        for _ in range(5):
            net.train_step(x, y)
        ts, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = clock()
            net.train_step(x, y)
            ts.append(clock() - t)
        ts.sort()
        out[b] = (b / ts[0], b / ts[len(ts) // 5])
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", required=True, help="name=path,name=path: source trees (the first is the reference)")
    ap.add_argument("--variants", default="none,unit,channel", help="comma-separated batchnorm variants")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batches", default="32,128,256", help="comma-separated batch sizes")
    ap.add_argument("--reps", type=int, default=2, help="alternating repeats (the order flips each time)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed steps per batch size and repeat")
    ap.add_argument("--cpu", action="store_true", help="time the calling thread's CPU time, not the wall clock")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.child:
        return child(a.child[0], int(a.child[1]), batches, a.seconds, a.cpu)
    trees = [t.split("=", 1) for t in a.trees.split(",")]
    res, loads = {}, []
    for r in range(a.reps):
        for bn in a.variants.split(","):
            for t in a.threads.split(","):
                for name, path in (trees if r % 2 == 0 else trees[::-1]):
                    path = os.path.abspath(path)
                    env = dict(os.environ, PYTHONPATH=path, NUMBA_CACHE_DIR=os.path.join(path, ".numba-cache"))
                    loads.append(os.getloadavg()[0])
                    cmd = [sys.executable, __file__, "--child", bn, t, "--batches", a.batches,
                           "--seconds", str(a.seconds), "--trees", a.trees] + (["--cpu"] if a.cpu else [])
                    out = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
                    for b, v in out.items():
                        res.setdefault((bn, t, int(b), name), []).append(v)
    print(f"1-minute load average during the runs: {min(loads):.2f}-{max(loads):.2f}; "
          f"img/s of the best step (20th percentile), best of {a.reps}, {'CPU' if a.cpu else 'wall'} time")
    for bn in a.variants.split(","):
        for t in a.threads.split(","):
            for b in batches:
                best = {n: (max(v[0] for v in res[(bn, t, b, n)]), max(v[1] for v in res[(bn, t, b, n)]))
                        for n, _ in trees}
                ref = best[trees[0][0]][0]
                cells = " | ".join(f"{n} {v[0]:7,.0f} ({v[1]:,.0f})" for n, v in best.items())
                ratios = " ".join(f"{n}/{trees[0][0]} {best[n][0] / ref:.2f}" for n, _ in trees[1:])
                print(f"{bn:8s} {t} {b:4d} | {cells} | {ratios}")


if __name__ == "__main__":
    main()
