"""Run under `mpirun -n K` by test_distributed.py (not a test module): every rank computes its
block of deterministic per-shard parts, sums them with MpiComm.sum_shards, and prints one line
per case: "tree RANK NSHARDS LO HI SHA256" of the result bytes; then gather_rows and any_flag lines.
Usage: python mpi_tree_job.py M NSHARDS [NSHARDS ...]
"""

import hashlib
import sys

import numpy as np

from cnncli.distributed import get_comm


def shard_parts(nshards, m, lo, hi):
    """Rows lo..hi-1 of the (nshards, m) float32 parts: wide magnitudes, so the order of a sum shows."""
    rows = []
    for i in range(lo, hi):
        rng = np.random.default_rng([nshards, i])
        rows.append((rng.standard_normal(m) * 10.0 ** rng.uniform(-4, 4, m)).astype(np.float32))
    return np.array(rows, dtype=np.float32).reshape(hi - lo, m)


def main():
    comm = get_comm()
    m = int(sys.argv[1])
    for nshards in map(int, sys.argv[2:]):
        lo, hi = comm.shard_block(nshards)
        total = comm.sum_shards(shard_parts(nshards, m, lo, hi), nshards)
        print(f"tree {comm.rank} {nshards} {lo} {hi} {hashlib.sha256(total.tobytes()).hexdigest()}",
              flush=True)
    rows = np.full((comm.rank + 1, 3), comm.rank, dtype=np.int64)     # rank r gives r+1 rows
    print(f"rows {comm.rank} {','.join(map(str, comm.gather_rows(rows)[:, 0]))}", flush=True)
    stop_at = None
    for step in range(10):     # the last rank asks to stop at step 3; every rank must stop there
        if comm.any_flag(comm.rank == comm.size - 1 and step == 3):
            stop_at = step
            break
    print(f"flag {comm.rank} {stop_at}", flush=True)


if __name__ == "__main__":
    main()
