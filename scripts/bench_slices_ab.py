"""Source trees and BN variants side by side in one run, in short turns: one long-lived process per
(tree, variant), each training for --slice seconds when its turn comes, round after round, so a
shared machine's slow minutes fall on every process alike (bench_steps_ab.py runs each tree for
whole seconds in a fresh process instead).

    python scripts/bench_slices_ab.py --trees old=/tmp/perf-old,new=. [--variants none,unit]
        [--batch 128] [--threads 2] [--rounds 60] [--slice 0.1]

Each process runs Network.train_step + the Adam step (bench.Ours) on rotating random batches with
its tree on PYTHONPATH and its own numba cache (<tree>/.numba-cache). Prints each process's median
img/s over the rounds, each variant's new/old ratio against the first tree, and each tree's
BN/no-BN ratio when "none" is among the variants. A developer's A/B tool, not a benchmark of
record (cnn bench).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def child(bn, batch, threads):
    from cnncli.bench import Ours, random_batches
    from cnncli.kernels import set_threads

    set_threads(threads)
    batches, net, i = random_batches(batch, 12), Ours(12, bn), 0
    for _ in range(10):
        net.train(*batches[i % 4])
        i += 1
    print("ready", flush=True)
    for line in sys.stdin:                       # one turn per line: train for that many seconds
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < float(line):
            net.train(*batches[i % 4])
            i, n = i + 1, n + batch
        print(n / (time.perf_counter() - t0), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", required=True, help="name=path,name=path: source trees (the first is the reference)")
    ap.add_argument("--variants", default="none,unit", help="comma-separated batchnorm variants")
    ap.add_argument("--batch", type=int, default=128, help="batch size")
    ap.add_argument("--threads", type=int, default=2, help="threads per process (0 = all cores)")
    ap.add_argument("--rounds", type=int, default=60, help="turns of every process")
    ap.add_argument("--slice", type=float, default=0.1, help="seconds of training per turn")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], int(a.child[1]), int(a.child[2]))
    trees = [t.split("=", 1) for t in a.trees.split(",")]
    variants = a.variants.split(",")
    procs = {}
    for name, path in trees:
        path = os.path.abspath(path)
        env = dict(os.environ, PYTHONPATH=path, NUMBA_CACHE_DIR=os.path.join(path, ".numba-cache"))
        for bn in variants:
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--trees", a.trees,
                                  "--child", bn, str(a.batch), str(a.threads)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=path)
            if p.stdout.readline().strip() != "ready":
                raise SystemExit(f"{name} {bn}: the process did not start (see its stderr above)")
            procs[(name, bn)] = p
    rates, loads = {k: [] for k in procs}, []
    for _ in range(a.rounds):
        loads.append(os.getloadavg()[0])
        for k, p in procs.items():
            p.stdin.write(f"{a.slice}\n")
            p.stdin.flush()
            rates[k].append(float(p.stdout.readline()))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"batch {a.batch}, {a.threads} thread(s), {a.rounds} rounds of {a.slice} s each; "
          f"1-minute load average {min(loads):.2f}-{max(loads):.2f}; median img/s")
    ref = trees[0][0]
    for bn in variants:
        cells = " | ".join(f"{name} {med[(name, bn)]:7,.0f}" for name, _ in trees)
        ratios = " ".join(f"{name}/{ref} {med[(name, bn)] / med[(ref, bn)]:.3f}" for name, _ in trees[1:])
        print(f"{bn:8s} | {cells} | {ratios}")
    if "none" in variants:
        for bn in (v for v in variants if v != "none"):
            print(f"{bn}/none: " + "  ".join(f"{name} {med[(name, bn)] / med[(name, 'none')]:.3f}"
                                             for name, _ in trees))


if __name__ == "__main__":
    main()
