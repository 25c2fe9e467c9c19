"""Run under `mpirun -n K` by test_distributed.py and the fault experiments (not a test module):
a dummy training loop. Each step is one Allgather and a short sleep; SIGINT/SIGTERM set a flag,
any_flag makes every rank stop at the same step, rank 0 saves OUT/last.txt atomically every step
and at the stop (after STOP_DELAY seconds, a slow save). Usage: python mpi_fault_job.py OUT [MODE]
with MODE config-error (every rank fails alike inside everyone()), rank-error (rank 1 alone fails inside everyone()), main-error
(rank 0 fails inside main_first()), fail (rank 1 fails after setup while rank 0 waits: fail()) or main-save
(rank 0's save of OUT/last.npz, a whole one there, fails while rank 1 waits: fail() of runfolder.unsaved's error).
"""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from cnncli.distributed import everyone, fail, get_comm, main_first
from cnncli.errors import ConfigError, DataError


def save(out: Path, text: str) -> None:
    tmp = out / "last.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "last.txt")


def main():
    out = Path(sys.argv[1])
    comm = get_comm()
    if sys.argv[2:] == ["config-error"]:
        everyone(comm, config_error)
    if sys.argv[2:] in (["rank-error"], ["main-error"], ["fail"], ["main-save"]):
        errors(comm, sys.argv[2])
    got = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda s, f: got.append(s))
    print(f"ready {comm.rank} {os.getpid()}", flush=True)
    step = 0
    while True:
        step += 1
        comm.comm.Allgather(np.full(1000, step, np.float64), np.empty((comm.size, 1000))) \
            if comm.size > 1 else None
        time.sleep(0.05)
        if comm.rank == 0:
            save(out, f"step {step}\n")
        if comm.any_flag(bool(got)):
            break
    time.sleep(float(os.environ.get("STOP_DELAY", "0")))     # a slow save
    if comm.rank == 0:
        names = signal.Signals(got[0]).name if got else "another rank's signal"
        save(out, f"step {step} stopped by {names}\n")
        print(f"rank 0 saved step {step} and stops ({names})", flush=True)
    sys.exit(0)


def config_error():
    raise ConfigError("cfg.yaml: train.batch_size: 64 is 8 shard(s) ... (on every rank)")


def errors(comm, mode):
    def broken(rank):
        if comm.rank == rank:
            raise DataError(f"data/x.png: unreadable on rank {rank} only")
        return comm.rank

    if mode == "rank-error":
        everyone(comm, broken, 1)
    elif mode == "main-error":
        main_first(comm, broken, 0)
    elif mode == "main-save":
        from cnncli.errors import CheckpointError
        from cnncli.runfolder import unsaved

        out = Path(sys.argv[1])
        if comm.rank == 0:
            (out / "last.npz").write_bytes(b"a whole checkpoint")
            fail(comm, unsaved(CheckpointError(f"{out / 'last.npz'}: cannot save the checkpoint (no space left on "
                                               "the device)"), out / "last.npz", out))
        comm.barrier()                                        # rank 1 waits here until mpirun ends it
    else:
        assert everyone(comm, broken, -1) == comm.rank      # no rank fails: each keeps its result
        if comm.rank == 1:
            fail(comm, OSError(28, "No space left on device"))
        comm.barrier()                                        # rank 0 waits here until mpirun ends it
    print(f"rank {comm.rank} went on", flush=True)


if __name__ == "__main__":
    main()
