"""Data-parallel training speed on this machine: training img/s of
  A  1 process x 1 thread    today's Network.train_step on the whole batch
  B  1 process x 2 threads   the same (its two-halves path)
  C  1 process x 1 thread    micro-sharded: train_step per 8-image shard, scaled, tree_sum (the design)
  D  2 ranks x 1 thread      C split over `mpirun -n 2` (each rank its shard block, MpiComm.sum_shards)
and the ratios D/B (goal >= 0.90) and B/A. Every mode runs the same optimizer step (Adam) after the
reduction. Not a correctness test (tests/test_distributed.py is) and not wired to train.py yet: a mode
is a callable `step(x, labels)`; the sharded one is built from `model.Network(...).train_step`.

    python scripts/bench_dist.py [--batchnorm none] [--batch 64] [--seconds 3] [--repeats 3]

The script starts `mpirun -n 2` (the one next to python) on itself for mode D.
`mpirun -n K python scripts/bench_dist.py --reductions S` times only the reductions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnncli import distributed as D  # noqa: E402
from cnncli.model import Network  # noqa: E402
from cnncli.optim import Optimizer  # noqa: E402

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}


def whole_batch_step(net, opt):
    """Today's path: one train_step on the whole batch, then the optimizer."""
    def step(x, labels):
        net.train_step(x, labels)
        opt.step(net.params.flat, net.grads.flat)
    return step


def sharded_step(net, opt, comm):
    """The design: this rank's shards one by one (gradients scaled by the shard's share of the
    batch), the per-shard rows summed in the fixed tree across ranks, then the optimizer.
    Without BN only: BN needs the shards' partial statistics first (the next wave's model API)."""
    def step(x, labels):
        n = x.shape[0]
        nshards = D.shard_count(n)
        lo, hi = comm.shard_block(nshards)
        rows = np.empty((hi - lo, net.grads.flat.size), net.grads.flat.dtype)   # (hi-lo, M)
        for i in range(lo, hi):
            sl = D.shard_slice(i, n)
            net.train_step(x[sl], labels[sl])
            np.multiply(net.grads.flat, (sl.stop - sl.start) / n, out=rows[i - lo])
        net.grads.flat[...] = comm.sum_shards(rows, nshards)
        opt.step(net.params.flat, net.grads.flat)
    return step


def measure(step, batch, seconds, repeats, comm):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 12, batch)
    step(x, labels)                                     # compile / warm up
    rates = []
    for _ in range(repeats):
        comm.barrier()
        t0, steps = time.perf_counter(), 0
        while True:                                     # every rank runs the same number of steps
            step(x, labels)
            steps += 1
            if comm.any_flag(time.perf_counter() - t0 >= seconds):
                break
        rates.append(steps * batch / (time.perf_counter() - t0))
    return float(np.median(rates))


def reductions(comm, m, nshards, calls=200):
    """Median microseconds of one reduction of nshards rows of m float32 (this rank's block)."""
    lo, hi = comm.shard_block(nshards)
    rows = np.random.default_rng(comm.rank).standard_normal((hi - lo, m)).astype(np.float32)
    out = {}
    for name, fn in (("sum_shards", comm.sum_shards), ("sum_shards_columns", comm.sum_shards_columns),
                     ("local tree_sum of S rows", lambda r, s: D.tree_sum(np.repeat(r, s // len(r), 0)))):
        times = []
        for _ in range(calls):
            comm.barrier()
            t0 = time.perf_counter()
            fn(rows, nshards)
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times) * 1e6)
    return out


def run_mode(args, threads, sharded, comm):
    import numba

    numba.set_num_threads(threads)
    net = Network(batchnorm=args.batchnorm, seed=0)
    opt = Optimizer("adam", net.params.flat.size, 1e-3)
    step = sharded_step(net, opt, comm) if sharded else whole_batch_step(net, opt)
    return measure(step, args.batch, args.seconds, args.repeats, comm)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batchnorm", default="none", choices=["none"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mpirun-args", default="", help="Extra mpirun arguments, e.g. '--bind-to none'.")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reductions", type=int, metavar="S", default=0,
                   help="Only time the reductions of S shard rows of 69,989 float32 (run it under mpirun).")
    args = p.parse_args()
    comm = D.get_comm()
    if args.reductions:
        res = reductions(comm, 69989, args.reductions)
        if comm.is_main:
            for name, us in res.items():
                print(f"{comm.size} rank(s), S={args.reductions}: {name:28s} {us:8.0f} us median")
        return
    if args.worker:                                    # mode D, one of the mpirun ranks
        rate = run_mode(args, 1, True, comm)
        if comm.is_main:
            print(json.dumps({"D": rate}))
        return
    D.check_ranks(args.batch, 2)
    res = {"A": run_mode(args, 1, False, comm), "B": run_mode(args, 2, False, comm),
           "C": run_mode(args, 1, True, comm)}
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {**os.environ, **MPI_ENV, "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run([str(mpirun), "-n", "2", *args.mpirun_args.split(), sys.executable, __file__, "--worker", "--batch", str(args.batch),
                          "--seconds", str(args.seconds), "--repeats", str(args.repeats)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"mpirun -n 2 failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    res.update(json.loads(out.stdout.strip().splitlines()[-1]))
    names = {"A": "1 process x 1 thread", "B": "1 process x 2 threads",
             "C": "1 process x 1 thread, 8-image shards + tree", "D": "2 ranks x 1 thread (mpirun)"}
    print(f"batchnorm={args.batchnorm}, batch {args.batch}, {args.repeats} x {args.seconds:g} s, median img/s")
    for k in "ABCD":
        print(f"  {k}  {names[k]:45s} {res[k]:9,.0f}")
    print(f"  D/B (2 ranks vs 2 threads, goal >= 0.90): {res['D'] / res['B']:.2f}")
    print(f"  B/A (2 threads vs 1): {res['B'] / res['A']:.2f}    C/A (sharding overhead): {res['C'] / res['A']:.2f}")


if __name__ == "__main__":
    main()
