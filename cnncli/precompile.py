"""First-run compilation of the numba kernels a run needs, in parallel worker processes.

`start()` finds the kernels a training run calls, with their argument types, by a dry run of a tiny
network with every kernel stubbed out, checks numba's on-disk cache for each, and compiles the missing
ones in spawned processes (a kernel per task, a process per core) that write the cache the run loads
each kernel from once it is there: it changes when and where kernels compile, never what they compile
to. Not the kernels (kernels/), nor a cache manager (numba keeps it; docs/performance.md, "Start-up").
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import warnings

import numpy as np

KERNEL_MODULES = ("activation", "adam", "batchnorm", "conv", "conv16", "conv32", "inference", "lookup",
                  "loss", "pool")

def kernel_dispatchers() -> list:
    """Every cached numba dispatcher (`@njit(cache=True)`) of the cnncli.kernels modules."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    found = []
    for name in KERNEL_MODULES:
        mod = importlib.import_module(f"cnncli.kernels.{name}")
        for obj in vars(mod).values():
            if isinstance(obj, Dispatcher) and obj.py_func.__module__ == mod.__name__ \
                    and not isinstance(getattr(obj, "_cache", None), NullCache):
                found.append(obj)
    return found


def record_calls(run, dispatchers=None) -> dict:
    """Run `run()` with every kernel stubbed out -> {dispatcher: {argument types}} of the kernel calls
    that had no compiled version in this process. A stub returns 0.0 and writes nothing, so `run` must
    not depend on the values kernels compute. Thread-safe (kernels called from worker threads count)."""
    dispatchers = kernel_dispatchers() if dispatchers is None else dispatchers
    calls, lock = {}, threading.Lock()

    def stub_for(disp):
        def stub(*args):          # numba's dispatcher calls this where it would compile, then its result
            sig = tuple(disp.typeof_pyval(a) for a in args)
            with lock:
                calls.setdefault(disp, set()).add(sig)
            return lambda *a: 0.0
        return stub

    for d in dispatchers:
        d._compile_for_args = stub_for(d)
    try:
        run()
    finally:
        for d in dispatchers:
            del d._compile_for_args
    return calls


def training_run(batchnorm: str, optimizer: str = "adam", dtype=np.float32, parts=("step", "inference")):
    """A function doing, on a tiny network, every kind of kernel call a `cnn train` run makes: "step" the
    input lookup, a train step (two halves without BN) and the optimizer; "inference" the validation's
    lookup and inference of > 8 and of <= 8 images."""
    def run():
        from cnncli import model, optim
        from cnncli.kernels import lookup_batch

        net = model.Network(num_classes=2, batchnorm=batchnorm, dtype=dtype)
        images = np.zeros((model.SPLIT_MIN, 32, 32), np.uint8)                      # (M,H,W)
        table = np.zeros(256, dtype)                                                # (256,)
        idx = np.arange(model.SPLIT_MIN)                                            # (N,)
        labels = np.zeros(model.SPLIT_MIN, np.int64)                                # (N,)
        opt = optim.Optimizer(optimizer, net.params.flat.size, 1e-3, dtype=dtype)
        with np.errstate(all="ignore"), warnings.catch_warnings():   # the stubs leave arrays uninitialized,
            warnings.simplefilter("ignore")                            # also on the worker threads
            if "step" in parts:
                net.train_step(lookup_batch(images, idx, table), labels)
                opt.step(net.params.flat, net.grads.flat, 1e-3)
            if "inference" in parts:
                x = lookup_batch(images, idx, table)
                net.predict_proba(x[: model.SMALL_BATCH + 1])
                net.predict_proba(x[:1])
    return run


def plan(batchnorm: str, optimizer: str = "adam", dtype=np.float32):
    """(first, later): what the first training step needs and the cache lacks, then what only validation
    needs ({dispatcher: {argument types}} each); (None, None) when the cache cannot be read."""
    first = missing(record_calls(training_run(batchnorm, optimizer, dtype, ("step",))))
    later = missing(record_calls(training_run(batchnorm, optimizer, dtype, ("inference",))))
    if first is None or later is None:
        return None, None
    for d in [d for d in later if d in first]:       # one task per kernel: with the first step's
        first[d] = first[d] | later.pop(d)
    return first, later


def missing(calls: dict):
    """The subset of `calls` that numba's on-disk cache lacks, or None when the cache cannot be read
    this way (numba internals changed: then nothing is known and nothing is done)."""
    try:
        out = {}
        for disp, sigs in calls.items():
            cache = disp._cache
            index = cache._cache_file._load_index()
            codegen = disp.targetctx.codegen()
            lacking = {s for s in sigs if cache._index_key(s, codegen) not in index}
            if lacking:
                out[disp] = lacking
        return out
    except Exception:       # a private API: never let it break a run
        return None


def _compile(module: str, name: str, sigs: list) -> float:
    """Worker process: compile `module.name` for each signature (numba saves each to its cache)."""
    t = time.perf_counter()
    disp = getattr(importlib.import_module(module), name)
    for sig in sigs:
        disp.compile(sig)
    return time.perf_counter() - t


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Precompile:
    """Compiles kernels in worker processes: `todo` (what the first training step needs) in the order the
    run first calls them, then `later` (validation's), on workers to spare or once `todo` is done. Until a
    kernel's worker is done, a call of it in this process waits for it (then loads it from the cache), so
    the run goes as far as the kernels ready allow. A failed worker just leaves its kernel to compile here,
    as numba always does. The workers are daemons: a run that stops early (a bad path, Ctrl-C) ends them
    instead of waiting for them."""

    def __init__(self, todo: dict, workers: int, later=None):
        import multiprocessing

        later = list((later or {}).items())
        self.kernels, self.workers, self.t0 = len(todo) + len(later), workers, time.perf_counter()
        self._lock, self._submitted = threading.Lock(), threading.Event()
        self._results, self._first_left = {}, len(todo)
        spare = max(workers - len(todo), 0) if todo else len(later)
        self._held = dict(later[spare:])
        # spawn, not fork: this process may already run numba's and OpenBLAS's threads
        self._pool = multiprocessing.get_context("spawn").Pool(workers)
        for d in [*todo, *self._held]:
            d._compile_for_args = self._waiting(d)
        for d, sigs in todo.items():                  # dict order: the dry run's call order
            self._submit(d, sigs, self._first_done)
        for d, sigs in later[:spare]:
            d._compile_for_args = self._waiting(d)
            self._submit(d, sigs, None)
        if not self._held:
            self._release_held()

    def _submit(self, disp, sigs, callback) -> None:
        task = (disp.py_func.__module__, disp.py_func.__name__, sorted(sigs, key=str))
        self._results[disp] = self._pool.apply_async(_compile, task, callback=callback, error_callback=callback)

    def _first_done(self, _result) -> None:
        """Pool's result thread, after each of the first step's kernels: after the last, submit the rest."""
        with self._lock:
            self._first_left -= 1
            if self._first_left != 0:
                return
        for d, sigs in self._held.items():
            self._submit(d, sigs, None)
        self._release_held()

    def _release_held(self) -> None:
        self._pool.close()
        self._submitted.set()

    def _waiting(self, disp):
        def compile_for_args(*args, **kws):     # numba calls this where it would compile
            if disp not in self._results:
                self._submitted.wait()
            try:
                self._results[disp].get()
            except Exception:   # noqa: BLE001 -- the kernel then compiles in this process
                pass
            disp.__dict__.pop("_compile_for_args", None)
            return type(disp)._compile_for_args(disp, *args, **kws)     # loads it from the cache
        return compile_for_args

    def wait(self) -> float:
        """Block until every worker is done -> seconds since the start."""
        self._submitted.wait()
        for disp, result in list(self._results.items()):
            try:
                result.get()
            except Exception:   # noqa: BLE001
                pass
            disp.__dict__.pop("_compile_for_args", None)
        self._pool.join()
        return time.perf_counter() - self.t0


class _Nothing:
    """Nothing to compile ahead (a warm cache, or the pre-compile turned off)."""

    def wait(self) -> float:
        return 0.0


def env_workers() -> int:
    """CNNCLI_COMPILE_WORKERS: compile processes (default: one per core); 0 turns the pre-compile off, so
    kernels compile in the run's own process on first use, one after the other."""
    value = os.environ.get("CNNCLI_COMPILE_WORKERS", "").strip()
    return int(value) if value.isdigit() else cpu_count()


def start(batchnorm: str, optimizer: str = "adam", dtype=np.float32, workers=None, say=None):
    """Start compiling, in `workers` processes (None: env_workers()), the kernels a training run of this
    kind needs and the cache lacks; `say(line)` tells the user, once, when there is anything to compile.
    Returns an object whose `wait()` blocks until they are in the cache."""
    workers = env_workers() if workers is None else workers
    first, later = plan(batchnorm, optimizer, dtype)
    n = len(first or {}) + len(later or {})
    if n == 0:
        return _Nothing()
    job = Precompile(first, min(workers, n), later) if workers > 0 else _Nothing()
    if say is not None:
        where = f" in {job.workers} processes" if workers > 0 else ""
        say(f"Compiling {n} numba kernels for this CPU{where} (first run only; later runs load them from "
            "numba's cache) ...")
    return job


def warmup(variants=("none", "unit", "channel"), workers=None) -> tuple[int, float]:
    """Compile into numba's cache every kernel that training and inference of these BN variants need
    (float32, Adam) -> (kernels compiled, seconds). `cnn warmup`; 0 kernels when the cache is warm."""
    t = time.perf_counter()
    workers = env_workers() if workers is None else workers
    todo = {}
    for bn in variants:
        for disp, sigs in (missing(record_calls(training_run(bn))) or {}).items():
            todo.setdefault(disp, set()).update(sigs)
    if todo:
        if workers > 0:
            Precompile(todo, min(workers, len(todo))).wait()
        else:
            for disp, sigs in todo.items():
                _compile(disp.py_func.__module__, disp.py_func.__name__, sorted(sigs, key=str))
    return sum(map(len, todo.values())), time.perf_counter() - t


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
