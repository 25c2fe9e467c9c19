"""Run under `mpirun -n K` by test_distributed.py and the fault experiments (not a test module):
a dummy training loop. Each step is one Allgather and a short sleep; SIGINT/SIGTERM set a flag,
any_flag makes every rank stop at the same step, rank 0 saves OUT/last.txt atomically every step
and at the stop (after STOP_DELAY seconds, a slow save). Usage: python mpi_fault_job.py OUT [config-error]
"""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from cnncli.distributed import get_comm, report_once
from cnncli.errors import ConfigError


def save(out: Path, text: str) -> None:
    tmp = out / "last.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "last.txt")


def main():
    out = Path(sys.argv[1])
    comm = get_comm()
    if sys.argv[2:] == ["config-error"]:
        report_once(comm, ConfigError("cfg.yaml: train.batch_size: 64 is 8 shard(s) ... (on every rank)"))
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


if __name__ == "__main__":
    main()
