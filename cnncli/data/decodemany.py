"""Decoding many image files in order: in forked worker processes, one per core this process may
use, with a progress bar and an ETA; in this process for a few files, where fork is missing, or
after a worker died (same bytes, same order). A file's own decoding is decode.py's; this module
does not scan folders (scan.py) or cache results (cache.py).
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import closing

import numpy as np

from ..cores import usable_cores
from ..lifeline import stops_held
from .decode import MAX_PIXELS, decode_jobs

PROCESS_MIN_IMAGES = 512   # below this, decoding runs in this process (forking costs ~20-50 ms)
CHUNK = 256                # images per unit of work (and per progress-bar update)


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, capped by a cgroup CPU quota), at least 1."""
    return usable_cores()


class Jobs:
    """The decode jobs (path, image_size, resize, max_pixels) of prefix + rel for rel in rels, made
    per slice so a million files do not hold a million tuples."""

    def __init__(self, rels, image_size, resize, max_pixels, prefix=""):
        self.rels, self.prefix = rels, prefix
        self.args = (int(image_size), resize, int(max_pixels))

    def __len__(self):
        return len(self.rels)

    def __getitem__(self, sl):
        return [(self.prefix + r,) + self.args for r in self.rels[sl]]


def _decode_chunk(jobs) -> list:
    """One chunk's [(array or None, reason or None)], in a worker process or this one (decode.decode_jobs)."""
    return decode_jobs(jobs)


def _bounds(n: int, workers: int) -> list:
    size = max(1, min(CHUNK, -(-n // (workers * 4))))
    return list(range(0, n, size)) + [n]


def _decode_in_processes(jobs, workers):
    """A generator of _decode_chunk results, in order, from `workers` forked processes; None where fork
    is not available. It stops early (no exception) when a worker dies; the caller does the rest."""
    import multiprocessing

    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return None                            # fork is only safe enough on Linux (macOS: system frameworks)
    return _process_parts(jobs, workers, multiprocessing.get_context("fork"))


def _worker_start(parent: int) -> None:
    """A forked decode worker: it holds none of the parent's cache locks, it ends with its parent
    (lifeline.die_with_parent), so a parent killed mid-decode (SIGKILL, SIGTERM) leaves no worker
    behind to block the next run, and it ignores SIGINT: Ctrl-C reaches the whole process group, and
    a worker interrupted inside the pool's queues could leave the parent's shutdown waiting on it for
    ever; the parent, interrupted, shuts the pool down (its chunks under way finish first)."""
    import signal

    from ..lifeline import die_with_parent
    from .cache import close_inherited_locks

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_locks()
    die_with_parent(parent)


def _process_parts(jobs, workers, ctx):
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    b = _bounds(len(jobs), workers)
    try:
        with warnings.catch_warnings():       # Python >= 3.12 warns when forking a threaded process;
            warnings.simplefilter("ignore", DeprecationWarning)   # the children only decode files
            with stops_held():                # a stop comes before the pool or after a submit
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_start,
                                           initargs=(os.getpid(),))
            try:
                pending = deque()             # at most 2 chunks per worker in flight: bounded memory
                for i in range(len(b) - 1):
                    with stops_held():        # the first submit forks the workers
                        pending.append(pool.submit(_decode_chunk, jobs[b[i]:b[i + 1]]))
                    if len(pending) >= 2 * workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                _shut(pool)
    except (BrokenProcessPool, OSError, NotImplementedError, ImportError):  # no sem_open (/dev/shm) etc.
        return


def _shut(pool) -> None:
    """pool.shutdown: the chunks not started cancelled, those under way finished. A stop (Ctrl-C)
    that comes meanwhile waits for its end (stops_held): one that cut it short can leave the workers
    waiting for work and the process's exit waiting for them, for ever; killing them instead can
    cut a result in half on its pipe, on which the pool's thread then waits. An error inside
    pool.submit (not a stop: stops_held holds them there) can leave its manager thread created but
    never started, and shutting that down raises RuntimeError ("cannot join thread before it is
    started"), which would replace the error: its forked workers, which nothing would stop, are
    killed."""
    try:
        with stops_held():
            pool.shutdown(wait=True, cancel_futures=True)
    except RuntimeError:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
            proc.join(5)


def iter_decoded(jobs, workers=None, progress=False):
    """Yield lists of (array (S,S) uint8 or None, reason or None) covering `jobs` in order.

    With workers > 1 (default: every core of this process) and at least PROCESS_MIN_IMAGES files,
    chunks go to forked processes: small images are GIL-bound Python work. Where fork is unavailable,
    or a worker dies, the rest decodes in this process: same bytes, same order. progress=True shows a
    tqdm bar with an ETA on stderr when it is a terminal."""
    workers = default_workers() if workers is None else int(workers)
    bar = _bar(len(jobs)) if progress and sys.stderr.isatty() else None
    done, parts = 0, None
    try:
        if workers > 1 and len(jobs) >= PROCESS_MIN_IMAGES:
            parts = _decode_in_processes(jobs, workers)
        for part in parts or ():
            done += len(part)
            if bar is not None:
                bar.update(len(part))
            yield part
        for a in range(done, len(jobs), CHUNK):
            part = _decode_chunk(jobs[a:a + CHUNK])
            if bar is not None:
                bar.update(len(part))
            yield part
    finally:
        if parts is not None:     # (closed at once: its worker pool shuts down now, not at interpreter exit)
            parts.close()
        if bar is not None:
            bar.close()


def _bar(total):
    from tqdm import tqdm

    return tqdm(total=total, desc="decoding images", unit="img", leave=False, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)


def decode_many(paths, image_size=32, resize="pad", workers=None, max_pixels=MAX_PIXELS, progress=False):
    """Decode in order. Returns (list of (S,S) uint8 or None, list of reasons or None)."""
    arrays, why = [], []
    with closing(iter_decoded(Jobs(list(paths), image_size, resize, max_pixels), workers, progress)) as parts:
        for part in parts:
            arrays.extend(r[0] for r in part)
            why.extend(r[1] for r in part)
    return arrays, why


def decode_array(jobs, workers=None, progress=False):
    """Decode `jobs` into one (K,S,S) uint8 array of the usable files, filled in place (no list of
    arrays, no stacked copy) -> (images, [(job index, reason)] of the skipped ones)."""
    s = jobs.args[0]
    images = np.empty((len(jobs), s, s), dtype=np.uint8)   # (N,S,S); untouched rows cost no memory
    skipped, k, i = [], 0, 0
    # closing: when this loop ends, by a stop or an error too, the decode workers shut down at once,
    # whatever still holds the generator (the exit would wait on workers waiting for work)
    with closing(iter_decoded(jobs, workers, progress)) as parts:
        for part in parts:
            for a, reason in part:
                if a is None:
                    skipped.append((i, reason))
                else:
                    images[k] = a
                    k += 1
                i += 1
    return images[:k], skipped


def _drop_pages(a) -> None:
    """Give back the pages of a read-only memory map that were read (np.load's mmap_mode='r' array)."""
    import mmap

    m = getattr(a, "_mmap", None)
    if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        m.madvise(mmap.MADV_DONTNEED)


def reuse_plan(ids, previous):
    """For each entry of identity ids[i] ((N,) uint64, filekeys.file_keys: 0 unknown), the entry of a
    previous cache entry (cache.read_previous's (images, skipped, ids)) holding the same file, or -1:
    (N,) int64."""
    old_ids = previous[2]
    src = np.full(len(ids), -1, dtype=np.int64)
    if not len(old_ids) or not len(ids):
        return src
    order = np.argsort(old_ids, kind="stable")                               # (M,)
    pos = np.minimum(np.searchsorted(old_ids[order], ids), len(order) - 1)   # (N,)
    hit = (ids != 0) & (old_ids[order][pos] == ids)
    src[hit] = order[pos[hit]]
    return src


def decode_reusing(jobs, src, previous, workers=None, progress=False, chunk: int = 1 << 15):
    """decode_array(jobs), taking each entry i with src[i] >= 0 (reuse_plan) from the previous cache
    entry: its pixels, or its reason to be skipped; only the others (new or changed files) decode ->
    (images (K,S,S) uint8, [(job index, reason)]), as decode_array gives them."""
    old_images, old_skipped, old_ids = previous
    s = jobs.args[0]
    old_bad = np.zeros(len(old_ids), dtype=bool)                             # (M,)
    old_bad[[i for i, _ in old_skipped]] = True
    old_row = np.cumsum(~old_bad) - 1                                        # (M,) its image row
    reasons = dict(old_skipped)
    todo = np.flatnonzero(src < 0)                                           # (T,) entries to decode
    fresh, fresh_bad = decode_array(Jobs(jobs.rels.take(todo), *jobs.args, prefix=jobs.prefix), workers,
                                    progress) if len(todo) else (np.zeros((0, s, s), np.uint8), [])
    bad = np.zeros(len(src), dtype=bool)                                     # (N,)
    reused = np.flatnonzero(src >= 0)
    bad[reused[old_bad[src[reused]]]] = True
    bad[todo[[j for j, _ in fresh_bad]]] = True
    skipped = sorted([(int(i), reasons[int(src[i])]) for i in reused[old_bad[src[reused]]]]
                     + [(int(todo[j]), r) for j, r in fresh_bad])
    out_row = np.cumsum(~bad) - 1                                            # (N,) its row in images
    images = np.empty((int((~bad).sum()), s, s), dtype=np.uint8)             # (K,S,S)
    good_reused = reused[~old_bad[src[reused]]]
    for a in range(0, len(good_reused), chunk):                              # (bounded temporaries)
        part = good_reused[a:a + chunk]
        images[out_row[part]] = old_images[old_row[src[part]]]
        _drop_pages(old_images)                     # (the old file's pages read: out of this process's memory)
    fresh_good = np.ones(len(todo), dtype=bool)
    fresh_good[[j for j, _ in fresh_bad]] = False
    images[out_row[todo[fresh_good]]] = fresh
    return images, skipped
