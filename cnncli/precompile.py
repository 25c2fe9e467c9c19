"""First-run compilation of the numba kernels a run needs, in parallel worker processes. It changes
when and where kernels compile, never what they compile to. Not the kernels (kernels/), nor which
of them a run needs (kernelplan.py), nor a cache manager (numba keeps it; docs/performance.md,
"Start-up").
"""

# `start()` takes kernelplan's list of the kernels a training run calls that numba's on-disk cache
# lacks, and compiles them in this and spawned processes (a kernel per task, a process per core) that
# write the cache the run loads each kernel from once it is there: it changes when and where kernels
# compile, never what they compile to.

from __future__ import annotations

import importlib
import os
import sys
import time

import numpy as np

from cnncli import kernelplan
from cnncli.cores import usable_cores


def finish_background(say=None) -> None:
    """At a training run's end, in its process: wait for the BACKGROUND kernels the workers still
    have to compile, saying so once (the workers are daemons: leaving now would throw their work
    away, and every later run would start it again), then forget the jobs. Ctrl-C skips the wait: the
    workers end, the run's results are already saved."""
    for job in list(_JOBS):
        left = [i for i, d in enumerate(job._disps) if kernelplan.is_background(d) and job._state[i] != DONE]
        job._go.value = 1
        if left and any(p.is_alive() for p in job._procs):
            if say is not None:
                say("Finishing numba's cache for the one-call training step (first run only, and of each BN "
                    "variant; up to a few minutes; Ctrl-C skips it and a later run compiles it) ...")
            try:
                for i in left:
                    job._wait_for(i)
            except KeyboardInterrupt:           # the run is complete and saved: only the cache is left
                for p in job._procs:
                    p.kill()
                _JOBS.clear()
                if say is not None:
                    say("Skipped: a later run compiles the one-call training step.")
                return
        _JOBS.remove(job)


def _compile(module: str, name: str, sigs: list) -> None:
    """Compile `module.name` for each signature (numba saves each to its cache)."""
    disp = getattr(importlib.import_module(module), name)
    for sig in sigs:
        disp.compile(sig)


FREE, TAKEN, DONE = 0, 1, 2     # a task's state, shared by this process and the workers
_JOBS = []                      # the Precompile jobs of this process (compiling_elsewhere asks them)
_COMPILING = [False]            # start() found kernels to compile in this process (compiled_here)


def compiled_here() -> bool:
    """Whether start() has had kernels to compile in this process (a first run) since the last call: the
    first epoch after it includes compiling, and its epoch line says so (once, not for cnn cv's next fold)."""
    compiled, _COMPILING[0] = _COMPILING[0], False
    return compiled


def compiling_elsewhere(disp) -> bool:
    """True while a worker process of a running Precompile job has `disp` still to compile (a call
    would wait for it): shards.py then runs a BN step through kernels it already has (the same bits)."""
    return any(job.busy(disp) for job in _JOBS)


def _install() -> None:
    """Let the core's steps ask compiling_elsewhere (shards.py imports nothing above it)."""
    from cnncli import shards

    shards.COMPILING_ELSEWHERE[0] = compiling_elsewhere


def _worker(tasks: list, order: list, state, go, for_a_run: bool = True, parent: int | None = None) -> None:
    """Worker process: claim the next free task in `order`, compile it, until none is left. For a
    run, the BACKGROUND kernels (last in `order`) wait for `go` (the run's first steps are through:
    their kernels are compiled) and compile at the lowest CPU priority: the run trains without them
    meanwhile, and its threads keep their cores (os.nice: POSIX; elsewhere as before). With the
    parent's pid, it ends with its parent (a killed run would leave it waiting for `go` for ever)."""
    if parent is not None:
        from cnncli.lifeline import die_with_parent

        die_with_parent(parent)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # (a terminal's Ctrl-C is the run's to handle: no traceback here)
    while True:
        with state.get_lock():
            i = next((i for i in order if state[i] == FREE), None)
            if i is None:
                return
            state[i] = TAKEN
        try:
            if for_a_run and tuple(tasks[i][:2]) in kernelplan.BACKGROUND:     # (last: nothing else is left)
                while not go.value:
                    time.sleep(0.05)
                if hasattr(os, "nice"):
                    os.nice(19 - os.nice(0))
            _compile(*tasks[i])
        except Exception:   # noqa: BLE001 -- the run then compiles this kernel itself
            pass
        state[i] = DONE


def cpu_count() -> int:
    """The cores this process may use (cores.usable_cores: affinity, cgroup CPU quota)."""
    return usable_cores()


class Precompile:
    """Compiles the kernels of `todo` (what the first training step needs, in the order the run calls
    them) and `later` (validation's) in this process and `workers` spawned ones, each kernel once: a
    worker takes validation's first (the inference kernel is the longest task: started last, it would
    finish after everything else; validation needs it only at the end of the epoch), then the first
    step's from the last one back (this process meets them from the front as the run calls them),
    the BACKGROUND kernels last (the run goes without them until they are done); or, with
    background_last=False (for a caller that only `wait()`s: `cnn warmup`), first, as the longest tasks,
    at the workers' normal priority.
    A call of a kernel no one took compiles it here;
    of one a worker took, waits for it and loads it from the cache. So no process idles while a kernel
    it needs is left, and a busy machine loses nothing to the workers. A failed worker leaves its kernel
    to this process; the workers are daemons, ended when the run ends (a bad path, Ctrl-C)."""

    def __init__(self, todo: dict, workers: int, later=None, background_last: bool = True):
        import multiprocessing

        items = list(todo.items()) + list((later or {}).items())
        self.kernels, self.workers, self.t0 = len(items), workers, time.perf_counter()
        self._tasks = [(d.py_func.__module__, d.py_func.__name__, sorted(sigs, key=str)) for d, sigs in items]
        order = list(range(len(todo), len(items))) + list(range(len(todo) - 1, -1, -1))
        order.sort(key=lambda i: kernelplan.is_background(items[i][0]) == background_last)   # last or first (stable)
        # wait(): this process from the front (the first step's kernels in the order the run calls them),
        # or, everything at once, in the workers' order (longest first)
        self._mine = list(range(len(items))) if background_last else order
        # spawn, not fork: this process may already run numba's and OpenBLAS's threads
        ctx = multiprocessing.get_context("spawn")
        self._state = ctx.Array("b", len(items))                   # FREE/TAKEN/DONE per task
        self._go = ctx.Value("b", 0)                                # 1: the BACKGROUND kernels may start
        self._procs = [ctx.Process(target=_worker,
                                   args=(self._tasks, order, self._state, self._go, background_last, os.getpid()),
                                   daemon=True,
                                   name=f"cnncli-compile-{k}") for k in range(workers)]
        for p in self._procs:
            p.start()
        self._disps = [d for d, _ in items]
        for i, d in enumerate(self._disps):
            d._compile_for_args = self._claim_or_wait(d, i)
        _install()
        _JOBS.append(self)

    def busy(self, disp) -> bool:
        """`disp` has a task not done yet while a worker lives to do it. Asked about a BACKGROUND
        kernel once every other task is done (a step's kernels are all there), lets the workers
        start the BACKGROUND ones."""
        tasks = [i for i, d in enumerate(self._disps) if d is disp]
        if tasks and kernelplan.is_background(disp) and not self._go.value and all(
                self._state[i] == DONE for i, d in enumerate(self._disps) if not kernelplan.is_background(d)):
            self._go.value = 1
        return any(self._state[i] != DONE for i in tasks) and any(p.is_alive() for p in self._procs)

    def _claim(self, i: int) -> bool:
        with self._state.get_lock():
            mine = self._state[i] == FREE
            if mine:
                self._state[i] = TAKEN
        return mine

    def _wait_for(self, i: int) -> None:
        while self._state[i] != DONE and any(p.is_alive() for p in self._procs):
            time.sleep(0.02)

    def _claim_or_wait(self, disp, i):
        def compile_for_args(*args, **kws):     # numba calls this where it would compile
            mine = self._claim(i)
            if not mine:
                self._wait_for(i)
            disp.__dict__.pop("_compile_for_args", None)
            try:                                # compiles here if mine, else loads the worker's
                return type(disp)._compile_for_args(disp, *args, **kws)
            finally:
                if mine:
                    self._state[i] = DONE
        return compile_for_args

    def pending(self) -> int:
        """Tasks not done yet."""
        return sum(1 for s in self._state if s != DONE)

    def wait(self) -> float:
        """Compile here what no worker took, wait for the workers -> seconds since the start."""
        self._go.value = 1
        for i in self._mine:
            if self._claim(i):
                try:
                    _compile(*self._tasks[i])
                finally:
                    self._state[i] = DONE
        for i in range(len(self._tasks)):
            self._wait_for(i)
        for p in self._procs:
            p.join()
        for d in self._disps:
            d.__dict__.pop("_compile_for_args", None)
        if self in _JOBS:
            _JOBS.remove(self)
        return time.perf_counter() - self.t0


class _Nothing:
    """Nothing to compile ahead (a warm cache, or the pre-compile turned off)."""

    def wait(self) -> float:
        return 0.0


def env_workers() -> int:
    """Compile processes besides the run's own: CNNCLI_COMPILE_WORKERS when set (0: none, every kernel
    compiles in the run's process on first use), else one per core that other processes leave idle
    (busy_cores), at most cores - 1: on a busy machine a worker adds its own numba start-up and takes no
    less time (scripts/bench_first_run.py at load ~4 on 2 cores, 29f5f34: 40-44 s vs 35-37 s)."""
    value = os.environ.get("CNNCLI_COMPILE_WORKERS", "").strip()
    if value.isdigit():
        return int(value)
    cores = cpu_count()
    return max(0, min(cores - 1, round(cores - busy_cores())))


LOADAVG = "/proc/loadavg"


def busy_cores() -> float:
    """The cores other processes keep busy: the 1-minute load average, but no more than the tasks
    runnable right now besides this one (LOADAVG's fourth field): a job that has just ended, such as
    the `pip install` before a first run, weighs on the average for a minute or more. 0 where the
    OS keeps no load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    try:
        with open(LOADAVG) as f:
            now = int(f.read().split()[3].split("/")[0]) - 1          # "running/total": minus this process
    except (OSError, ValueError, IndexError):
        return load
    return min(load, max(0, now))


def start(batchnorm: str, optimizer: str = "adam", dtype=np.float32, workers=None, say=None, augment=True,
          background=True):
    """Start compiling, in `workers` processes (None: env_workers()), the kernels a training run of this
    kind needs and the cache lacks; `say(line)` tells the user, once, when there is anything to compile.
    background=False leaves out the BACKGROUND kernels (MPI ranks never call the one-call steps). Returns an
    object whose `wait()` blocks until they are in the cache."""
    workers = env_workers() if workers is None else workers
    # without workers the one-call step compiles in this process on its first call, so its fallback
    # path's kernels (the steps while a worker compiles it) are never called; MPI ranks call only those
    first, later = kernelplan.plan(batchnorm, optimizer, dtype, augment, fallback=workers > 0, ranks=not background)
    if first is not None and not background:
        first = {d: s for d, s in first.items() if not kernelplan.is_background(d)}
    n = len(first or {}) + len(later or {})
    if n == 0:
        return _Nothing()
    _COMPILING[0] = True
    job = Precompile(first, min(workers, n), later) if workers > 0 else _Nothing()
    if say is not None:
        where = f" in {job.workers + 1} processes" if workers > 0 else ""
        long = "; with batch norm it takes minutes" if batchnorm != "none" else ""   # (its one-call step: ~2 min)
        say(f"Compiling {n} numba kernel{'' if n == 1 else 's'} for this CPU{where} (first run only, and of each BN "
            f"variant, optimizer and dtype; later runs load them from numba's cache{long}) ...")
        from numba.core import config as numba_config

        from .kernels import cachestamp

        if cachestamp.fallback_note():        # (the cache is not where the user asked, or in the temp folder)
            say(cachestamp.fallback_note())
        if numba_config.OPT < 3:              # (NUMBA_OPT=0: the demo's epochs ran ~20x slower, unsaid)
            say(f"note: NUMBA_OPT={os.environ.get('NUMBA_OPT', '')} compiles these kernels with less optimization "
                "than numba's default 3: training runs several times slower (about 20x at 0); unset it")
    return job


def warmup(variants=("none", "unit", "channel"), workers=None) -> tuple[int, float]:
    """Compile into numba's cache every kernel that training and inference of these BN variants need
    (float32, Adam) -> (kernels compiled, seconds). `cnn warmup`; 0 kernels when the cache is warm."""
    t = time.perf_counter()
    workers = env_workers() if workers is None else workers
    n = compile_missing([kernelplan.training_run(bn) for bn in variants], workers)
    return n, time.perf_counter() - t


def compile_missing(runs, workers: int) -> int:
    """Compile into numba's cache every kernel the calls `runs` (functions of no argument) make and
    the cache lacks (found by a dry run of each: kernelplan.record_calls), in this process and up to
    `workers` spawned ones, the longest first; return once all are there -> the (kernel, types)
    compiled. `cnn warmup` and the test suite's warm-ups."""
    todo = {}
    for run in runs:
        with np.errstate(all="ignore"):        # a dry run's stubbed kernels leave garbage behind
            calls = kernelplan.record_calls(run)
        for disp, sigs in (kernelplan.missing(calls) or {}).items():
            todo.setdefault(disp, set()).update(sigs)
    if todo:
        Precompile(todo, min(workers, len(todo)), background_last=False).wait()
    return sum(map(len, todo.values()))


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
