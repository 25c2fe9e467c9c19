"""Data-parallel training speed on this machine, the real training step (model.Network.train_step on
the global batch + the Adam step, as cnn train runs it), training img/s of
  A  1 process x 1 thread
  B  1 process x 2 threads
  D  2 ranks x 1 thread      `mpirun -n 2`, Network(comm=MpiComm): each rank its block of the shards
alternated A, B, D in every round (rounds = --repeats), each with the 1-minute load average, then the
medians and the ratios D/B (goal >= 0.90) and B/A. Not a correctness test (tests/test_mpi_train.py is).

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


def training_step(net, opt):
    """What Trainer.train_step does after the batch is made: train_step, then the optimizer."""
    def step(x, labels):
        net.train_step(x, labels)
        opt.step(net.params.flat, net.grads.flat, 1e-3)
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


def run_mode(args, threads, comm, repeats):
    from cnncli.kernels import set_threads

    set_threads(threads)
    net = Network(batchnorm=args.batchnorm, seed=0, **({"comm": comm} if comm.size > 1 else {}))
    opt = Optimizer("adam", net.params.flat.size, 1e-3)
    return measure(training_step(net, opt), args.batch, args.seconds, repeats, comm)


def mpirun_mode(args):
    """Mode D in a fresh `mpirun -n 2` (one measurement of --seconds after a warm-up step)."""
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {**os.environ, **MPI_ENV, "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run([str(mpirun), "-n", "2", *args.mpirun_args.split(), sys.executable, __file__, "--worker",
                          "--batchnorm", args.batchnorm, "--batch", str(args.batch), "--seconds", str(args.seconds)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"mpirun -n 2 failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["D"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batchnorm", default="none", choices=["none", "unit", "channel"])
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
        rate = run_mode(args, 1, comm, 1)
        if comm.is_main:
            print(json.dumps({"D": rate}))
        return
    D.check_ranks(args.batch, 2)
    names = {"A": "1 process x 1 thread", "B": "1 process x 2 threads", "D": "2 ranks x 1 thread (mpirun)"}
    print(f"batchnorm={args.batchnorm}, batch {args.batch}, {args.repeats} round(s) of {args.seconds:g} s "
          f"per mode, training img/s (load = 1-minute load average before the measurement)")
    res = {k: [] for k in names}
    for r in range(args.repeats):
        for k in names:
            load = os.getloadavg()[0]
            rate = mpirun_mode(args) if k == "D" else run_mode(args, 1 if k == "A" else 2, comm, 1)
            res[k].append(rate)
            print(f"  round {r + 1}  {k}  {names[k]:28s} {rate:9,.0f}   load {load:.2f}", flush=True)
    med = {k: float(np.median(v)) for k, v in res.items()}
    for k in names:
        print(f"  median {k}  {names[k]:28s} {med[k]:9,.0f}")
    print(f"  D/B (2 ranks vs 2 threads, goal >= 0.90): {med['D'] / med['B']:.2f}    "
          f"B/A (2 threads vs 1): {med['B'] / med['A']:.2f}")


if __name__ == "__main__":
    main()
