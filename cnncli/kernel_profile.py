"""Where a training step's (or an inference pass's) time goes, kernel by kernel or phase by phase,
from timers wrapped around every kernel for a few steps. A diagnostic for developers, not a
benchmark: the wrappers cost about a microsecond a call (`cnn bench` measures rates).
"""

# Where a training step's (or an inference pass's) time goes, kernel by kernel; or, for a training
# step, phase by phase (the shard tasks between BN's whole-batch statistics, and the calling
# thread's time between them).
#
#     python -m cnncli.kernel_profile [train|infer|phases] [batchnorm] [batch_size] [threads (0 = all)]
#
# Wraps every numba kernel and the numpy matmul/sum/... calls of a step with timers for a few
# steps, then restores them. A diagnostic for developers: the wrappers add about a microsecond per call,
# so its absolute rates are below `cnn bench`'s; it is not a benchmark.

from __future__ import annotations

import threading
import time

import numpy as np

from cnncli.bench import Ours, images_per_second, random_batches
from cnncli.machine import compute_modules, is_dispatcher, using_threads

_TIMED_NUMPY = ("matmul", "dot", "einsum", "sum", "add", "multiply", "subtract", "copyto")


def _profiled_targets():
    """([(module, attribute, dispatcher)] of the kernels to time, [modules whose `np` to time]).

    The one place that knows where the kernels live and how they are named (module-level numba
    dispatchers named `*_into`, wrapped in every module that calls them by name), and which modules
    make the step's numpy calls (none of their numba code reads `np`).
    """
    from cnncli import model, passes, shards
    from cnncli.kernels import conv16, fc

    callers = [mod for mod in compute_modules() if mod is not model] + [model, passes, shards]
    kernels = [(mod, name, obj) for mod in callers
               for name, obj in vars(mod).items() if name.endswith("_into") and is_dispatcher(obj)]
    return kernels, [model, passes, shards, fc, conv16]


def kernel_flops(name, args):
    """FLOPs of one call when the arguments have the shapes the conv kernels/matmul use, else None."""
    try:
        if name in ("matmul", "dot"):       # (..., M, K) @ (..., K, P), batch dims broadcast
            a, b = args[0], args[1]
            batch = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])))
            return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        if "conv2d_forward" in name:       # (xp, w, b, z): each output = C*K*K multiply-adds
            return 2 * args[3].size * args[1][0].size
        if "conv2d_backward_dx" in name:   # (dz, w, dxp)
            return 2 * args[0].size * args[1][0].size
        if "conv2d_backward_dw" in name:   # (dz, xp, dw, db)
            return 2 * args[0].size * args[2][0].size
        if name.endswith(("conv16_forward", "conv32_forward")):   # (xp, w, z)
            return 2 * args[2].size * args[1][0].size
        if name.endswith("conv16_backward_dx"):                  # (dz, w, dzp, dx)
            return 2 * args[0].size * args[1][0].size
        if name.endswith("conv16_backward_dw"):                  # (dz, xp, dzt, dwt (C,K,K,F))
            return 2 * args[0].size * args[3][..., 0].size
        if name.endswith("conv32_backward_dw"):                  # (dz, xp, dw, db)
            return 2 * args[0].size * args[2][0].size
        if "infer_chunks" in name:       # (sync, bounds, x, w1, .., w2, .., w3, ..): the whole network per image
            return 2 * args[2].shape[0] * (args[3].size * 32 * 32 + args[7].size * 16 * 16 + args[11].size
                                           + args[16].size)
    except (AttributeError, IndexError, TypeError):
        pass
    return None


class _NumpyProxy:
    """Stands in for `numpy` inside the modules that make a step's numpy calls, so their matmul/sum/... calls can be timed
    (`a @ b` and array methods bypass it and land in "other")."""

    def __init__(self, wrap):
        self._wrap = wrap

    def __getattr__(self, attr):
        value = getattr(np, attr)
        return self._wrap(attr, value) if attr in _TIMED_NUMPY else value


def profile_step(batchnorm="none", batch_size=128, steps=20, threads=0, mode="train", num_classes=12) -> dict:
    """Time every numba kernel and numpy matmul/sum/... call of a training step (or an inference pass)
    by wrapping them; the rest of the step is reported as "other".

    Returns {"step_ms", "rows": [{"call", "calls_per_step", "ms_per_step", "share", "gflops"}]}.
    Kernels are first run once unwrapped (JIT). With more than one thread, calls made concurrently by
    worker threads are summed, so the shares are of thread time, not wall time ("other" can then come
    out small or negative): profile at threads=1 to see where a step's wall time goes. A training
    step runs its layer kernels one by one from Python here (shard by shard, or BN's phases: the
    path of a first run while the one-call step's kernel compiles), so that each can be timed; its
    "other" is that path's Python glue, which the one-call step does not pay.
    """
    from cnncli import shards

    with using_threads(threads) as n_threads, _kernel_by_kernel(shards):
        ours = Ours(num_classes, batchnorm)
        batches = random_batches(batch_size, num_classes)
        fn = ours.train if mode == "train" else (lambda x, y: ours.infer(x))
        images_per_second(fn, batches, 0.3)  # compile / load from cache, warm up
        acc, total = _timed_run(fn, batches, steps)
    rows = []
    for label, (sec, calls, flops) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
        rows.append({"call": label, "calls_per_step": calls / steps, "ms_per_step": sec / steps * 1e3,
                     "share": sec / total, "gflops": (flops / sec / 1e9) if flops else None})
    other = total - sum(v[0] for v in acc.values())
    rows.append({"call": "other (python, numpy glue, optimizer)" if mode == "train" else "other (python, numpy glue)",
                 "calls_per_step": None, "ms_per_step": other / steps * 1e3, "share": other / total, "gflops": None})
    return {"mode": mode, "batchnorm": batchnorm, "batch_size": batch_size, "threads": n_threads,
            "steps": steps, "step_ms": total / steps * 1e3, "rows": rows}


class _kernel_by_kernel:
    """Within: shards.run_step takes its per-shard / phase path (as while a worker compiles the
    one-call step's kernel), whose layer kernels are Python-visible calls."""

    def __init__(self, shards):
        self.shards, self.real = shards, shards._compiling

    def __enter__(self):
        self.shards._compiling = lambda kernel: True

    def __exit__(self, *exc):
        self.shards._compiling = self.real


def _timer(acc, lock):
    """wrap(name, f) -> f timed into acc[label] = [seconds, calls, flops], label = name + argument shapes."""
    def wrap(name, f):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = f(*args, **kwargs)
            dt = time.perf_counter() - t0
            arrays = [a for a in args if isinstance(a, np.ndarray)]
            shape = "x".join(str(tuple(a.shape) if name in _TIMED_NUMPY or a.ndim == 1 else tuple(a.shape[1:]))
                             for a in arrays[:2])
            label = f"{name.removesuffix('_into')} {shape}"
            flops = kernel_flops(name.removesuffix("_into"), args) or 0
            with lock:  # the model's conv worker threads call kernels concurrently
                slot = acc.setdefault(label, [0.0, 0, 0])
                slot[0] += dt
                slot[1] += 1
                slot[2] += flops
            return out
        return timed
    return wrap


def _timed_run(fn, batches, steps):
    """({label: [seconds, calls, flops]}, total seconds) of `steps` calls of fn with the timers in place."""
    acc = {}
    wrap = _timer(acc, threading.Lock())
    kernels, numpy_users = _profiled_targets()
    try:
        for mod, name, obj in kernels:
            setattr(mod, name, wrap(name, obj))
        for mod in numpy_users:
            mod.np = _NumpyProxy(wrap)
        t0 = time.perf_counter()
        for i in range(steps):
            x, y = batches[i % len(batches)]
            fn(x, y)
        total = time.perf_counter() - t0
    finally:
        for mod, name, obj in kernels:
            setattr(mod, name, obj)
        for mod in numpy_users:
            mod.np = np
    return acc, total


def format_profile(prof: dict) -> str:
    """The profile as a table: call and argument shapes, calls, ms per step, share, GFLOP/s."""
    lines = [f"profile: {prof['mode']}, batchnorm={prof['batchnorm']}, batch {prof['batch_size']}, "
             f"{prof['threads']} thread(s), {prof['steps']} steps: {prof['step_ms']:.2f} ms per step "
             f"({prof['batch_size'] / prof['step_ms'] * 1e3:,.0f} img/s with the timing wrappers)",
             f"{'call (argument shapes without N)':58s} {'calls':>5s} {'ms/step':>8s} {'share':>6s} {'GFLOP/s':>8s}"]
    for r in prof["rows"]:
        calls = "" if r["calls_per_step"] is None else f"{r['calls_per_step']:.0f}"
        gf = "" if r["gflops"] is None else f"{r['gflops']:.1f}"
        lines.append(f"{r['call'][:58]:58s} {calls:>5s} {r['ms_per_step']:>8.3f} {r['share']:>6.1%} {gf:>8s}")
    return "\n".join(lines)


def profile_phases(batchnorm="none", batch_size=128, steps=20, threads=0, num_classes=12) -> dict:
    """Time each phase of a training step (shards.each, or a phase of shards.run_phases: one task per
    8-image shard on the worker threads) and each of its tasks; the rest of the step (the afters
    between BN's phases, the optimizer) is "between phases". A step in one process is one job
    (shards.run_together): without BN (kernels/plainstep.py) each thread's call is one task; with BN
    (kernels/bnstep.py) its segments (bnstep.SEGMENTS) are timed by the marks it writes into its
    clock array, each thread's part of a segment one task.

    Returns {"step_ms", "rows": [{"phase", "tasks", "task_us", "busy_ms", "wall_ms"}], "serial_ms"}
    per step: busy_ms adds the tasks' times over the threads, wall_ms is the phase's elapsed time
    (from its first task's start to its last task's end, for run_phases' phases).
    """
    from cnncli import shards

    acc, lock = {}, threading.Lock()
    real_each, real_run_phases, real_together = shards.each, shards.run_phases, shards.run_together

    def timed(fn, spans=None):
        slot = acc.setdefault(fn.__name__, [0.0, 0.0, 0])          # [wall, busy, tasks]

        def task(j):
            t0 = time.perf_counter()
            fn(j)
            t1 = time.perf_counter()
            with lock:
                slot[1] += t1 - t0
                slot[2] += 1
                if spans is not None:
                    spans[0], spans[1] = min(spans[0], t0), max(spans[1], t1)
        return slot, task

    def each(fn, count):
        slot, task = timed(fn)
        t0 = time.perf_counter()
        real_each(task, count)
        slot[0] += time.perf_counter() - t0

    def run_phases(phases, count, on_caller=False):
        spans, wrapped = [], []
        for fn, after in phases:
            span = [float("inf"), 0.0]
            slot, task = timed(fn, span)
            spans.append((slot, span))
            wrapped.append((task, after))
        real_run_phases(wrapped, count, on_caller=on_caller)
        for slot, (first, last) in spans:
            slot[0] += last - first

    from cnncli.kernels import bnstep
    from cnncli.kernels.sync import cycle_rate

    rate, clocks, real_step = cycle_rate(), [], bnstep.bn_step_into
    marks = batchnorm != "none"            # bnstep writes clock marks; plainstep does not
    if rate <= 0:                          # no time-stamp counter: the BN step's segments stay untimed
        rate = float("nan")

    def bn_step_into(*args):
        clocks.append(args[-1])            # (Tc,2,K) the job's marks
        return real_step(*args)

    def run_together(job, abort):
        if not marks:                      # plainstep.py's one job: each thread's call is one task
            slot, task = timed(job)
            t0 = time.perf_counter()
            real_together(task, abort)
            slot[0] += time.perf_counter() - t0
            return
        real_together(job, abort)
        clock = clocks[-1]
        ran = clock[:, 1, 0] != 0                                     # the threads that ran it
        start, end = clock[ran, 1, :] / rate, clock[ran, 0, :] / rate  # (T, K) seconds
        for k, name in enumerate(bnstep.SEGMENTS):
            slot = acc.setdefault(name, [0.0, 0.0, 0])
            slot[0] += end[:, k].max() - start[:, k].min()
            slot[1] += float((end[:, k] - start[:, k]).sum())
            slot[2] += int(ran.sum())
        clock[...] = 0
        clocks.clear()

    with using_threads(threads) as n_threads:
        ours = Ours(num_classes, batchnorm)
        batches = random_batches(batch_size, num_classes)
        images_per_second(ours.train, batches, 0.3)
        shards.each, shards.run_phases, shards.run_together = each, run_phases, run_together
        bnstep.bn_step_into = bn_step_into
        try:
            t0 = time.perf_counter()
            for i in range(steps):
                ours.train(*batches[i % len(batches)])
            total = time.perf_counter() - t0
        finally:
            shards.each, shards.run_phases, shards.run_together = real_each, real_run_phases, real_together
            bnstep.bn_step_into = real_step
    rows = [{"phase": name, "tasks": tasks / steps, "task_us": busy / tasks * 1e6, "busy_ms": busy / steps * 1e3,
             "wall_ms": wall / steps * 1e3} for name, (wall, busy, tasks) in acc.items()]
    return {"batchnorm": batchnorm, "batch_size": batch_size, "threads": n_threads, "steps": steps,
            "step_ms": total / steps * 1e3, "rows": rows,
            "serial_ms": (total - sum(w for w, _, _ in acc.values())) / steps * 1e3}


def format_phases(prof: dict) -> str:
    """The phase profile as a table, in the step's order."""
    lines = [f"phases: train, batchnorm={prof['batchnorm']}, batch {prof['batch_size']}, {prof['threads']} "
             f"thread(s), {prof['steps']} steps: {prof['step_ms']:.2f} ms per step",
             f"{'phase':46s} {'tasks':>5s} {'us/task':>8s} {'busy ms':>8s} {'wall ms':>8s}"]
    for r in prof["rows"]:
        lines.append(f"{r['phase'][:46]:46s} {r['tasks']:>5.0f} {r['task_us']:>8.1f} {r['busy_ms']:>8.3f} "
                     f"{r['wall_ms']:>8.3f}")
    lines.append(f"{'between phases (Python, waits, optimizer)':56s} {'':>8s} {prof['serial_ms']:>8.3f}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m cnncli.kernel_profile [train|infer|phases] [batchnorm] [batch_size] [threads]
    import sys

    argv = sys.argv[1:]
    what = argv[0] if argv else "train"
    kw = dict(batchnorm=argv[1] if len(argv) > 1 else "none", batch_size=int(argv[2]) if len(argv) > 2 else 128,
              threads=int(argv[3]) if len(argv) > 3 else 0)
    print(format_phases(profile_phases(**kw)) if what == "phases" else format_profile(profile_step(mode=what, **kw)))
