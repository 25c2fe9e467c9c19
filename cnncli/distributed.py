"""Data-parallel plumbing: fixed micro-shards, one fixed pairwise reduction tree, and a communicator
(`Comm` for one process, `MpiComm` over mpi4py under `mpirun`) that sums per-shard partial vectors
so K ranks produce the same bits as one process; a rank's threads; how a K-rank run reports errors
(once, or naming the rank). Design and costs: docs/distributed.md.
It is not a trainer and computes no gradients; mpi4py is imported only under an MPI launcher.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from .cores import host_key, usable_cores
from .errors import CnnError, ConfigError

SHARD = 8   # images per micro-shard: the unit of work of a thread or rank, and a leaf of the tree
LINE_WAIT = 3       # seconds a rank other than 0 waits before leaving with rank 0's line to print (rank
                    # 0's own exit, right after its line, ends the wait: mpirun then stops the others)
ABORT_GRACE = 0.5   # seconds a failing rank waits between its error line and MPI_Abort (see MpiComm.abort)

# Set by mpirun/mpiexec/srun in every rank's environment (Open MPI, MPICH/Hydra, PMIx, Slurm PMI).
LAUNCH_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS")
LAUNCH_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
# How many processes an MPI launcher started together. A Slurm step's task count (srun -n N) is not one
# of them: its tasks may each be a run of their own (srun -n 4 sh -c 'cnn train --config c$SLURM_PROCID.yaml').
STARTED_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE")


def shard_count(n: int, shard: int = SHARD) -> int:
    """Number of micro-shards of a batch of n images (the last one may be shorter)."""
    return -(-int(n) // shard)


def shard_slice(i: int, n: int, shard: int = SHARD) -> slice:
    """The images of shard i of a batch of n images."""
    return slice(i * shard, min((i + 1) * shard, n))


def block_of(rank: int, size: int, nshards: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous block [lo, hi) of nshards shards split over `size` ranks
    (equal blocks when size divides nshards, else as even as possible; possibly empty)."""
    return rank * nshards // size, (rank + 1) * nshards // size


def tree_sum(parts: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sum of the rows of parts (S,M) in ONE fixed pairwise tree: level by level row 2i + row 2i+1,
    an odd last row carried up unchanged. The result's bits depend only on the rows, never on who
    computed them. Allocates one (ceil(S/2),M) scratch; returns out (M,) (dtype of parts)."""
    if parts.ndim != 2 or parts.shape[0] < 1:
        raise ValueError(f"parts must have shape (S, M) with S >= 1, got {parts.shape}")
    s, m = parts.shape
    if out is None:
        out = np.empty(m, dtype=parts.dtype)
    if s == 1:
        out[...] = parts[0]
        return out
    half = s // 2
    work = np.empty(((s + 1) // 2, m), dtype=parts.dtype)           # (ceil(S/2), M)
    np.add(parts[0:2 * half:2], parts[1:2 * half:2], out=work[:half])
    if s % 2:
        work[half] = parts[s - 1]
    n = work.shape[0]
    while n > 1:            # in place: row i is written after rows 2i, 2i+1 were read (i <= 2i)
        half = n // 2
        for i in range(half):
            np.add(work[2 * i], work[2 * i + 1], out=work[i])
        if n % 2:
            work[half] = work[n - 1]
        n = half + n % 2
    out[...] = work[0]
    return out


def check_ranks(batch_size: int, size: int, resume: bool = False) -> None:
    """ConfigError unless `size` ranks split every full batch into equal shard blocks; on a resume
    (resume=True) it offers rank counts only, as the batch size cannot change there."""
    s = shard_count(batch_size)
    if size > 1 and s % size:
        ok = [k for k in range(1, s + 1) if s % k == 0]
        ranks = ", ".join(map(str, ok[:-1])) + (" or " if len(ok) > 1 else "") + str(ok[-1])
        step = SHARD * size                       # a batch of a multiple of `size` shards, the nearest
        near = sorted({b for b in (batch_size // step * step, -(-batch_size // step) * step) if b > 0})
        other = (" (the resumed run's batch size cannot change)" if resume else
                 f", or a batch_size whose shard count {size} divides, e.g. {' or '.join(map(str, near))}")
        raise ConfigError(
            f"train.batch_size: {batch_size} makes {s} shard{'s' if s > 1 else ''} of up to {SHARD} images "
            f"(the last may hold fewer), which {size} MPI ranks cannot split evenly; use {ranks} "
            f"rank{'s' if ok[-1] > 1 else ''}{other}")


class Comm:
    """One process: rank 0 of 1. The same interface as MpiComm, so callers never branch."""

    rank = 0
    size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_block(self, nshards: int) -> tuple[int, int]:
        """This rank's shards [lo, hi) of a batch of nshards shards."""
        return block_of(self.rank, self.size, nshards)

    def sum_shards(self, local_parts: np.ndarray, nshards: int, out=None, tree=None) -> np.ndarray:
        """tree_sum over all nshards per-shard rows; local_parts (hi-lo, M) are this rank's rows.
        tree(parts, out) -> out, when given, must give tree_sum's bits (kernels.reduce's threaded
        kernel does; it may skip columns the caller overwrites)."""
        parts = self._all_parts(local_parts, nshards)
        if tree is None:
            return tree_sum(parts, out)
        return tree(parts, np.empty(parts.shape[1], parts.dtype) if out is None else out)

    def sum_shards_columns(self, local_parts: np.ndarray, nshards: int) -> np.ndarray:
        """sum_shards with less traffic at large K (see MpiComm); the same bits."""
        return self.sum_shards(local_parts, nshards)

    def gather_rows(self, local_rows: np.ndarray) -> np.ndarray:
        """Every rank's rows (n_r, ...) concatenated in rank order, on every rank."""
        return np.ascontiguousarray(local_rows)

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if any rank passes True (all ranks must call it at the same step)."""
        return bool(flag)

    def bcast(self, obj):
        """Rank 0's (picklable) obj on every rank."""
        return obj

    def allgather(self, obj) -> list:
        """Every rank's (picklable) obj, in rank order, on every rank."""
        return [obj]

    def barrier(self) -> None:
        pass

    def idle_barrier(self, poll: float = 0.01) -> None:
        """A barrier that sleeps while it waits (MPI's spins a core), for waits of seconds."""


    def abort(self, code: int) -> None:
        sys.exit(code)

    def _all_parts(self, local_parts, nshards):
        lo, hi = self.shard_block(nshards)
        if local_parts.ndim != 2 or local_parts.shape[0] != hi - lo:
            raise ValueError(f"rank {self.rank}: local_parts has shape {local_parts.shape}, "
                             f"expected ({hi - lo}, M) for shards [{lo}, {hi}) of {nshards}")
        return local_parts


class MpiComm(Comm):
    """mpi4py's COMM_WORLD. Sums go through Allgatherv of the per-shard rows and the same local
    tree_sum on every rank (MPI's Allreduce promises no order); every rank gets identical bits."""

    def __init__(self, mpi_comm=None):
        from mpi4py import MPI    # noqa: PLC0415 -- only under a launcher (get_comm)

        self.MPI = MPI
        self.comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def _all_parts(self, local_parts, nshards):
        local = np.ascontiguousarray(Comm._all_parts(self, local_parts, nshards))
        m = local.shape[1]
        blocks = [block_of(r, self.size, nshards) for r in range(self.size)]
        counts = [(hi - lo) * m for lo, hi in blocks]
        displs = [lo * m for lo, _ in blocks]
        parts = np.empty((nshards, m), dtype=local.dtype)              # (S, M)
        self.comm.Allgatherv(local, [parts, (counts, displs)])
        return parts

    def sum_shards_columns(self, local_parts, nshards):
        """sum_shards for many ranks, the same bits with about a ring allreduce's traffic: when every
        block is 2^j whole shards it is a node of the tree, so each rank first sums its block locally;
        then rank j gathers column slice j of every rank's rows (Alltoallv), tree-sums it, and the
        slices are allgathered. Per rank ~(rows per rank + 1) * M floats, not S * M."""
        local = np.ascontiguousarray(Comm._all_parts(self, local_parts, nshards))
        k, m = self.size, local.shape[1]
        b = nshards // k
        if nshards % k == 0 and b >= 1 and b & (b - 1) == 0:
            local = tree_sum(local)[None, :]                                  # (1, M): one tree node
            nrows = [1] * k
        else:
            nrows = [hi - lo for lo, hi in (block_of(r, k, nshards) for r in range(k))]
        cols = [j * m // k for j in range(k + 1)]
        widths = [cols[j + 1] - cols[j] for j in range(k)]
        send = np.concatenate([local[:, cols[j]:cols[j + 1]].ravel() for j in range(k)])
        mine = widths[self.rank]
        recv = np.empty((sum(nrows), mine), dtype=local.dtype)               # (rows of all ranks, w)
        self.comm.Alltoallv([send, ([len(local) * w for w in widths], None)],
                            [recv, ([r * mine for r in nrows], None)])
        out = np.empty(m, dtype=local.dtype)
        self.comm.Allgatherv(tree_sum(recv), [out, (widths, cols[:-1])])
        return out

    def gather_rows(self, local_rows):
        local = np.ascontiguousarray(local_rows)
        rows = self.comm.allgather(local.shape[0])
        row = int(np.prod(local.shape[1:], dtype=np.int64))
        out = np.empty((sum(rows), *local.shape[1:]), dtype=local.dtype)
        counts = [r * row for r in rows]
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        self.comm.Allgatherv(local, [out, (counts, displs)])
        return out

    def any_flag(self, flag):
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def idle_barrier(self, poll=0.01):
        import time  # noqa: PLC0415

        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(poll)

    def abort(self, code):
        """End every rank of the job now (for an error only some ranks see). The pause lets the
        launcher forward this rank's last lines (its own pipe) before the abort (another channel)
        makes it print its banner, so the error line comes first."""
        import time  # noqa: PLC0415

        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE)
        self.comm.Abort(code)


def launched_by_mpi(environ=None) -> bool:
    """True when an MPI launcher (mpirun, mpiexec, srun) started this process."""
    env = os.environ if environ is None else environ
    return any(v in env for v in LAUNCH_SIZE_VARS + LAUNCH_RANK_VARS)


def launcher_rank(environ=None) -> int | None:
    """This process's rank as the MPI launcher's environment gives it, or None without a launcher (a
    Slurm task number is not a rank: srun's tasks without MPI are processes of their own)."""
    env = os.environ if environ is None else environ
    for var in LAUNCH_RANK_VARS:
        try:
            return int(env[var])
        except (KeyError, ValueError):
            continue
    return None


def get_comm(environ=None) -> Comm:
    """MpiComm under an MPI launcher, else the one-process Comm. A process an MPI launcher started as
    one of N > 1 that MPI leaves alone (another MPI's mpiexec, srun --mpi=pmi2 for an MPI without it)
    is a CnnError: each would train alone."""
    env = os.environ if environ is None else environ
    if launched_by_mpi(env):
        try:
            import mpi4py  # noqa: F401, PLC0415
        except ImportError:
            raise CnnError("this process was started by an MPI launcher but mpi4py is not installed: "
                           "pip install 'cnncli[mpi]'") from None
        comm = MpiComm()
    else:
        comm = Comm()
    var = next((v for v in STARTED_SIZE_VARS if v in env), None)
    if comm.size == 1 and var is not None and env[var].strip().isdigit() and int(env[var]) > 1:
        n = int(env[var])
        raise CnnError(f"{var}={n}: {n} processes were started together, but MPI connects this one to no "
                       "other, so each would train the whole run alone: start them with the mpirun of the MPI "
                       "that mpi4py uses (pip install 'cnncli[mpi]' puts it next to python; inside a Slurm "
                       "allocation too), or srun --mpi=pmix where Slurm's PMIx serves that MPI")
    return comm



def rank_threads(comm: Comm, threads: int) -> int:
    """train.threads for this rank. A positive value is used as given. 0 means the cores this
    process may use (its CPU affinity, capped by a cgroup CPU quota: cores.usable_cores), shared
    with the ranks on the same host that have the same affinity: bound ranks (mpirun's default for
    few ranks) get their own cores, unbound ones an equal part of the host (the first ranks one
    more core each when it does not divide)."""
    if threads:
        return int(threads)
    count = usable_cores()
    if comm.size == 1:
        return count
    me = host_key()
    mates = [r for r, other in enumerate(comm.allgather(me)) if other == me]   # includes this rank
    i, n = mates.index(comm.rank), len(mates)
    return max(1, count // n + (i < count % n))


# ----------------------------------------------------------------------------------------------
# errors under mpirun: every rank's error printed once; one rank's error named and fatal

def _line(err: BaseException) -> tuple[str, int, str]:
    """(the error's one line, printable on any terminal; its exit code; what goes before it when
    printed: "Error: ", or "" for a requested stop)."""
    from cnncli.atomic import os_error_line     # (an OSError no caller caught: the file, in plain words)

    text = os_error_line(err) if isinstance(err, OSError) else str(err)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text, int(getattr(err, "exit_code", 1)), getattr(err, "prefix", "Error: ")


def _settle(comm: Comm, errs: list) -> None:
    """errs: every rank's (line, code, prefix) or None. Returns when all are None; else every rank exits
    with the first failing rank's code after the line(s) are printed: once when every rank failed
    the same way (rank 0 prints it), else each failing rank prints "rank r of K: ..."."""
    failed = [e for e in errs if e is not None]
    if not failed:
        return
    if len(failed) == comm.size and len({line for line, _, _ in failed}) == 1:
        if comm.is_main:
            print(f"{failed[0][2]}{failed[0][0]}", file=sys.stderr, flush=True)
    elif errs[comm.rank] is not None:
        print(f"Error: rank {comm.rank} of {comm.size}: {errs[comm.rank][0]}", file=sys.stderr, flush=True)
    comm.barrier()                     # nobody exits (and so gets the others killed) before the print
    sys.exit(failed[0][1])


def _attempt(fn, args, kw):
    try:
        return fn(*args, **kw), None
    except (CnnError, OSError) as err:
        return None, err


def everyone(comm: Comm, fn, *args, **kw):
    """fn(*args, **kw) on every rank at once, then agree: the result when no rank raised a CnnError
    or OSError, else every rank ends (see _settle). One process: fn's errors propagate unchanged."""
    if comm.size == 1:
        return fn(*args, **kw)
    result, err = _attempt(fn, args, kw)
    _settle(comm, comm.allgather(None if err is None else _line(err)))
    return result


def main_first(comm: Comm, fn, *args, others: bool = True, **kw):
    """fn on rank 0 first (it fills a cache, creates a folder); an error there is printed once and
    ends every rank. Then, with others=True, fn on the other ranks (as everyone() does) and each
    rank keeps its own result; with others=False every rank gets rank 0's (picklable) result.
    The other ranks wait without spinning."""
    if comm.size == 1:
        return fn(*args, **kw)
    result, err = _attempt(fn, args, kw) if comm.is_main else (None, None)
    comm.idle_barrier()
    first = comm.bcast(None if err is None else _line(err))
    _settle(comm, [first] * comm.size)
    if not others:
        return comm.bcast(result)
    if comm.is_main:
        return everyone(comm, lambda: result)
    return everyone(comm, fn, *args, **kw)


def fail(comm: Comm, err: BaseException) -> None:
    """A CnnError or OSError that ended training on this rank. `err.everywhere` (set where every
    rank raises the same error at the same step: a stop, a diverged loss) means rank 0 prints it
    once and all exit with its code; `err.anywhere` (a stop during set-up: every rank takes the
    signal mpirun forwards, wherever its set-up is) that rank 0 prints it and every rank leaves at
    once with its code; `err.alone` (a stop of rank 0's work after training, the
    others only waiting to exit) that this rank prints it and exits with its code; otherwise this
    rank prints one line naming itself (not when `err.main_only`: rank 0's saves of the run's files,
    whose fault is the folder's) and ends the job (MPI_Abort with the error's exit code)."""
    line, code, prefix = _line(err)
    if getattr(err, "anywhere", False):
        if comm.is_main:
            print(f"{prefix}{line}", file=sys.stderr, flush=True)
        else:
            import time  # noqa: PLC0415

            time.sleep(LINE_WAIT)       # rank 0's line first: an exit gets the other ranks killed
        sys.stdout.flush()
        os._exit(code)                  # no MPI_Finalize, which would wait for ranks held in a collective;
                                        # mpirun ends the job with this status
    if getattr(err, "everywhere", False):
        _settle(comm, [(line, code, prefix)] * comm.size)
    if getattr(err, "alone", False):   # raised where the other ranks wait for nothing but the exit
        print(f"{prefix}{line}", file=sys.stderr, flush=True)
        sys.exit(code)
    rank = "" if getattr(err, "main_only", False) else f"rank {comm.rank} of {comm.size}: "   # (the run's saves)
    print(f"Error: {rank}{line}", file=sys.stderr, flush=True)
    comm.abort(code)       # a plain exit would wait in MPI_Finalize for ranks that wait for this one
