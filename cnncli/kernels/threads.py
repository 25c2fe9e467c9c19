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

import itertools
import threading

from ..blas import single_thread as blas_single_thread
from ..blas import threads_api

_POOL = [None, 0]      # [ThreadPoolExecutor, its size]


def set_threads(threads: int) -> int:
    """Numba's thread count, and OpenBLAS's (numpy's matmul) when it can be reached; 0 = all cores."""
    import numba

    n = min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
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
    if _POOL[1] != t:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL[0] is not None:
            _POOL[0].shutdown(wait=True)
        # each worker runs numba kernels on one thread of its own (numba's thread count is per thread)
        _POOL[0] = ThreadPoolExecutor(max_workers=t, thread_name_prefix="cnncli-shard",
                                      initializer=numba.set_num_threads, initargs=(1,))
        _POOL[1] = t
    return _POOL[0], t


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


def _on_threads(pool, t, drain, wait, futures=None):
    """drain() on t-1 worker threads and on this one, numba and OpenBLAS on one thread each
    meanwhile; then wait() for the job's end (run, run_phases, run_together: its futures list
    receives the workers' futures)."""
    import numba

    old = numba.get_num_threads()
    with blas_single_thread():
        for _ in range(t - 1):
            f = pool.submit(drain)
            if futures is not None:
                futures.append(f)
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
    futures = []

    def one():
        try:
            job(t)
        except BaseException:
            abort()
            raise

    def wait():
        for f in futures:
            f.result()

    try:
        _on_threads(pool, t, one, wait, futures)
    except BaseException:
        abort()                  # (the calling thread failed elsewhere: let the workers go)
        for f in futures:        # ... and wait for them to leave the arrays
            try:
                f.result()
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
