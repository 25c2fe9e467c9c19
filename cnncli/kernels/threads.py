"""Thread settings and the worker pool: numba's and OpenBLAS's thread counts, and worker threads
that run a job's chunks in a fixed assignment (a training step's micro-shards).
It does not decide what a chunk is (shards.py does).

Measured on the 2-core machine (scripts/bench_core.py): several threads calling a multi-threaded
OpenBLAS at once ran 100x slower, so `blas_single_thread()` keeps OpenBLAS on one thread while the
network runs (its GEMMs, the fc layers', are small); numba's own threads do the parallel work.
"""

from __future__ import annotations

from ..blas import single_thread as blas_single_thread  # noqa: F401  (re-exported: model.py uses it)
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
        _POOL[0] = ThreadPoolExecutor(max_workers=t, thread_name_prefix="cnncli-conv",
                                      initializer=numba.set_num_threads, initargs=(1,))
        _POOL[1] = t
    return _POOL[0], t


def run(job, nchunks):
    """job(worker, stride) for each worker: worker w takes chunks w, w+T, ... (fixed assignment).
    One chunk (or one thread) runs on the calling thread with numba on one thread, as on a worker.
    OpenBLAS stays on one thread meanwhile (several threads calling a multi-threaded OpenBLAS
    at once was measured 100x slower)."""
    pool, t = workers()
    t = min(t, nchunks)
    with blas_single_thread():
        if t <= 1:
            import numba

            old = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                job(0, 1)
            finally:
                numba.set_num_threads(old)
            return
        futures = [pool.submit(job, w, t) for w in range(t)]
        for f in futures:
            f.result()
