"""Thread settings and the worker pool: numba's and OpenBLAS's thread counts, and worker threads that
run a job's chunks (run, run_phases) or one call on every thread at once (run_together). It does not
decide what a chunk is (shards.py does).
"""

# Thread settings and the worker pool: numba's and OpenBLAS's thread counts, and worker threads
# that run a job's chunks (a training step's micro-shards), each taken by whichever thread is free
# (run; run_phases: phases of chunks with a serial step between them, as one job); run_together
# runs one call on every thread at once (kernels/bnstep.py's step, whose threads wait for one
# another).
#
# Measured on the 2-core machine (scripts/bench_core.py): several threads calling a multi-threaded
# OpenBLAS at once ran 100x slower, so `blas_single_thread()` keeps OpenBLAS on one thread while the
# network runs (its GEMMs, the fc layers', are small); numba's own threads do the parallel work.

from __future__ import annotations

import collections
import itertools
import os
import threading

import numpy as np

from ..blas import single_thread as blas_single_thread
from ..blas import threads_api

_POOL = [None, 0]      # [Workers, the thread count it serves]
IDLE_YIELDS = 2000     # sched_yields a worker spins through after a call before it sleeps (~1 ms)
WAIT_YIELDS = 2000     # ... and a caller waiting for a worker's call, before it sleeps


def set_threads(threads: int) -> int:
    """Numba's thread count, and OpenBLAS's (numpy's matmul) when it can be reached; 0 = all cores."""
    import numba

    n = min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
    try:
        numba.set_num_threads(n)
    except ValueError as err:       # (NUMBA_THREADING_LAYER=tbb on a machine without TBB)
        if "threading layer" not in str(err):
            raise
        from ..errors import CnnError

        layer = os.environ.get("NUMBA_THREADING_LAYER", "default")
        raise CnnError(f"NUMBA_THREADING_LAYER={layer}: numba could not start its threads: "
                       f"{' '.join(str(err).split()).rstrip('.')}; or unset NUMBA_THREADING_LAYER") from None
    blas = threads_api()
    if blas is not None:
        blas[1](n)
    return n


def max_threads() -> int:
    """The most threads numba can run in this process (NUMBA_NUM_THREADS)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def workers():
    """(pool, T): worker threads for the chunks of a job, as many as numba threads (numba.set_num_threads)."""
    import numba

    t = numba.get_num_threads()
    if t <= 1:
        return None, 1
    if _POOL[1] != t or _POOL[0].pid != os.getpid():
        if _POOL[0] is not None and _POOL[0].pid == os.getpid():
            _POOL[0].close()             # (a forked child has none of those threads: it makes its own)
        _POOL[0] = Workers(t - 1)
        _POOL[1] = t
    return _POOL[0], t


class Workers:
    """n daemon threads; worker i runs the calls post(i, fn) hands it, one at a time, numba on one
    thread inside each. After a call a worker spins a while (sync.spin_until: pause, then
    sched_yield, without the GIL; ~1 ms) before it sleeps, and a caller waiting for a call's end
    (wait) spins first too: the next step's call then starts without waking a sleeping thread,
    and its end is seen at once (a pool's sleeping worker took ~50 us to wake, twice per job:
    docs/performance.md, "Threads and load")."""

    def __init__(self, n):
        from .sync import spin_until, store_flag

        self._spin, self._store = spin_until, store_flag
        self.pid = os.getpid()
        self.flags = np.zeros(2 * n, np.int64)    # (2n,) worker i's last call posted at 2i, finished at 2i+1
        self.calls = [collections.deque() for _ in range(n)]   # worker i's calls to run: (number, fn), in order
        self.errors = [{} for _ in range(n)]      # worker i's failed calls: {number: exception} until waited for
        self.sleeping = [False] * n
        self.waiting = 0                          # callers asleep in wait()
        self.closed = False
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._loop, args=(i,), name=f"cnncli-shard_{i}", daemon=True)
                        for i in range(n)]
        for th in self.threads:
            th.start()

    def post(self, i, fn):
        """fn() on worker i after the calls posted to it before (from any thread) -> the call's
        number, for wait()."""
        with self.cond:
            k = int(self.flags[2 * i]) + 1       # (only post() writes it, under the lock)
            self.calls[i].append((k, fn))
            self._store(self.flags, 2 * i, k)
            if self.sleeping[i]:
                self.cond.notify_all()
        return k

    def wait(self, i, k):
        """Until worker i has finished call k (spinning first, then asleep); raises its exception."""
        if not self._spin(self.flags, 2 * i + 1, k, WAIT_YIELDS):
            with self.cond:
                self.waiting += 1
                while self.flags[2 * i + 1] < k:
                    self.cond.wait()
                self.waiting -= 1
        failed = self.errors[i].pop(k, None)
        if failed is not None:
            raise failed

    def _loop(self, i):
        import numba

        numba.set_num_threads(1)
        seen = 0
        while True:
            if not self._spin(self.flags, 2 * i, seen + 1, IDLE_YIELDS):
                with self.cond:
                    self.sleeping[i] = True
                    while self.flags[2 * i] <= seen and not self.closed:
                        self.cond.wait()
                    self.sleeping[i] = False
                    if self.closed:
                        return
            seen, fn = self.calls[i].popleft()
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 -- raised by wait() in the caller
                self.errors[i][seen] = e
            self._store(self.flags, 2 * i + 1, seen)
            with self.cond:
                if self.waiting:
                    self.cond.notify_all()

    def close(self):
        """Let the workers go once their calls are over (they exit instead of sleeping)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for th in self.threads:
            th.join(5)


def run(task, count):
    """task(j) for j in range(count), handed out in turn to the calling thread and T-1 worker
    threads (whoever is free takes the next j, so a thread the OS delays holds up nobody); callers
    make each j's result independent of the thread that runs it. Returns when every task has
    finished -- not when every worker has woken: a worker the OS starts late finds nothing left
    and returns at once, so on a loaded machine a step does not wait a time slice per call. The
    first exception of a task is raised here after all tasks ran. Numba runs on one thread inside
    a task; OpenBLAS stays on one thread meanwhile (several threads calling a multi-threaded
    OpenBLAS at once was measured 100x slower)."""
    pool, t = workers()
    t = min(t, count)
    taken = itertools.count()
    lock, finished = threading.Lock(), threading.Event()
    state = [0, None]                               # [tasks finished, first exception]

    def drain():
        while (j := next(taken)) < count:           # itertools.count's next is atomic (GIL)
            try:
                task(j)
            except BaseException as e:  # noqa: BLE001 -- re-raised by the caller below
                with lock:
                    state[1] = state[1] or e
            with lock:
                state[0] += 1
                if state[0] == count:
                    finished.set()

    if count <= 0:
        return
    _on_threads(pool, t, drain, finished.wait)
    if state[1] is not None:
        raise state[1]


def _on_threads(pool, t, drain, wait, calls=None):
    """drain() on t-1 worker threads and on this one, numba and OpenBLAS on one thread each
    meanwhile; then wait() for the job's end (run, run_phases, run_together: its calls list
    receives the workers' (i, call number) for Workers.wait)."""
    import numba

    old = numba.get_num_threads()
    with blas_single_thread():
        for i in range(t - 1):
            k = pool.post(i, drain)
            if calls is not None:
                calls.append((i, k))
        numba.set_num_threads(1)
        try:
            drain()
            wait()
        finally:
            numba.set_num_threads(old)


def run_together(job, abort):
    """job(t) at once on the calling thread and the t-1 worker threads, each running it exactly
    once (t = the thread count): for a job whose threads wait for one another (kernels/sync.py's
    barrier), which run() could hand twice to one thread. A thread whose job raises calls abort()
    (which must make the others' waits return: sync.ABORT) before the exception goes on. Returns
    when every thread has finished; the first exception is raised here."""
    pool, t = workers()
    if t <= 1:
        job(1)
        return
    calls = []

    def one():
        try:
            job(t)
        except BaseException:
            abort()
            raise

    def wait():
        for i, k in calls:
            pool.wait(i, k)

    try:
        _on_threads(pool, t, one, wait, calls)
    except BaseException:
        abort()                  # (the calling thread failed elsewhere: let the workers go)
        for i, k in calls:       # ... and wait for them to leave the arrays
            try:
                pool.wait(i, k)
            except BaseException:  # noqa: BLE001 -- the first exception is the one raised
                pass
        raise


def run_blocks(task, n, size):
    """task(slice) for the consecutive blocks of `size` items of range(n) (the last one shorter), on
    the worker threads through run(): for kernels whose items are independent (images)."""
    run(lambda j: task(slice(j * size, min(n, (j + 1) * size))), -(-n // size))


def run_phases(phases, count, on_caller=False):
    """For each (task, after) of `phases` in turn: task(j) for j in range(count) on the calling and
    the worker threads, then after() once, before any task of the next phase starts. One job for
    all the phases: after() runs on the thread that finished the phase's last task, which goes
    straight on to the next phase's tasks, while the others wait on a condition -- a step's
    phases pay no per-phase hand-out, and no sleeping caller is woken at each phase's end.
    on_caller=True: every after() on the calling thread (run() per phase), for afters that must
    stay on it (MPI collectives). The first exception of a task or an after() ends the job and is
    raised here once every thread has left it."""
    pool, t = workers()
    if on_caller or t <= 1 or count <= 1:
        for task, after in phases:
            run(task, count)
            if after is not None:
                after()
        return
    cond = threading.Condition()
    state = {"phase": 0, "next": 0, "done": 0, "busy": 0, "error": None}
    n_phases = len(phases)

    def over():
        return state["error"] is not None or state["phase"] >= n_phases

    def drain():
        while True:
            with cond:
                while not over() and state["next"] >= count:
                    cond.wait()
                if over():
                    return
                p, j = state["phase"], state["next"]
                state["next"] += 1
                state["busy"] += 1
            task, after = phases[p]
            try:
                task(j)
                with cond:
                    state["done"] += 1
                    last = state["done"] == count
                if last and after is not None:
                    after()
                with cond:
                    if last:
                        state["phase"], state["next"], state["done"] = p + 1, 0, 0
                    state["busy"] -= 1
                    cond.notify_all()
            except BaseException as e:  # noqa: BLE001 -- re-raised by the caller below
                with cond:
                    state["error"] = state["error"] or e
                    state["busy"] -= 1
                    cond.notify_all()
                return

    def wait():
        with cond:               # the job is over and no thread is inside a task (a worker still asleep
            while not over() or state["busy"]:   # finds the job over and leaves at once)
                cond.wait()

    _on_threads(pool, t, drain, wait)
    if state["error"] is not None:
        raise state["error"]
