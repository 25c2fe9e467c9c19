"""Which numba kernels a run needs, with their argument types, and which of them numba's on-disk
cache lacks: a dry run of a tiny network with every kernel stubbed out. Not the compiling of them
(precompile.py) nor the kernels (kernels/).
"""

from __future__ import annotations

import importlib
import threading
import warnings

import numpy as np

KERNEL_MODULES = tuple(f"cnncli.kernels.{name}" for name in (
    "activation", "adam", "augment_draw", "augment_pixels", "batchnorm", "bncoef", "bnpool", "bnstats", "bntree",
    "conv", "conv16", "conv32", "fc", "fcgrad", "head", "inference", "lookup", "loss", "pool", "reduce", "segments",
    "tally", "bnstep", "plainstep")) + ("cnncli.augment",)

# kernels the run does not call while a worker compiles them (precompile.compiling_elsewhere): the one-call
# training steps (bnstep's ~25 s of LLVM over every layer kernel it calls, plainstep's less) -- the
# run's steps go shard by shard or phase by phase through the layer kernels meanwhile, and a worker
# takes them after every other kernel
BACKGROUND = (("cnncli.kernels.bnstep", "bn_step_into"), ("cnncli.kernels.plainstep", "plain_step_into"))


def is_background(disp) -> bool:
    """One of the BACKGROUND kernels."""
    return (disp.py_func.__module__, disp.py_func.__name__) in BACKGROUND


def kernel_dispatchers() -> list:
    """Every cached numba dispatcher (`@njit(cache=True)`) of the kernel modules (KERNEL_MODULES)."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    found = []
    for name in KERNEL_MODULES:
        mod = importlib.import_module(name)
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


def training_run(batchnorm: str, optimizer: str = "adam", dtype=np.float32,
                 parts=("augment", "step", "fallback", "inference")):
    """A function doing, on a tiny network, every kind of kernel call a `cnn train` run makes: "augment"
    the augmentation of a batch; "step" the input lookup, a train step of two 8-image shards
    (unweighted and with per-image loss weights) and the optimizer; "fallback" a step
    as it runs while a worker compiles the one-call step, or on MPI ranks (shard by shard, phase by
    phase); "inference" the validation's lookup and inference of > 8 and of <= 8 images."""
    def run():
        from cnncli import model, optim
        from cnncli.distributed import SHARD
        from cnncli.kernels import lookup_batch
        from cnncli.kernels.tally import tally

        net = model.Network(num_classes=2, batchnorm=batchnorm, dtype=dtype)
        n = 2 * SHARD
        images = np.zeros((n, 32, 32), np.uint8)                                    # (M,H,W)
        table = np.zeros(256, dtype)                                                # (256,)
        idx = np.arange(n)                                                          # (N,)
        labels = np.zeros(n, np.int64)                                              # (N,)
        opt = optim.Optimizer(optimizer, net.params.flat.size, 1e-3, dtype=dtype)
        with np.errstate(all="ignore"), warnings.catch_warnings():   # the stubs leave arrays uninitialized,
            warnings.simplefilter("ignore")                            # also on the worker threads
            if "augment" in parts:
                from cnncli.augment import Augmenter, AugmentSettings

                aug = Augmenter(AugmentSettings(), seed=0, dtype=dtype, max_batch=n)
                out = np.empty((n, 1, 32, 32), dtype)                                   # (N,1,H,W)
                fills = np.full(n, np.nan)                                              # (M,)
                aug.bind(0, 0, lookup=(images, idx, table, fills))(slice(0, n), None, out)  # the trainer's
            if "step" in parts:
                from cnncli.augment import lookup_input

                x = lookup_batch(images, idx, table)
                x[...] = 0                # (a stub leaves it uninitialized, and the steps refuse NaN input)
                net.train_step(x, labels)                                                 # an input given
                _, probs = net.train_step(None, labels, np.ones(n, dtype),                # the trainer's
                                          lookup_input(images, idx, table))
                tally(net.grads.flat, probs, labels)                                  # the trainer's
                opt.step(net.params.flat, net.grads.flat, 1e-3)
            if "fallback" in parts:
                from cnncli import shards
                from cnncli.augment import lookup_input

                ask = shards.COMPILING_ELSEWHERE[0]           # the steps while a worker compiles the one-call step
                shards.COMPILING_ELSEWHERE[0] = is_background
                try:
                    net.train_step(None, labels, np.ones(n, dtype), lookup_input(images, idx, table))
                finally:
                    shards.COMPILING_ELSEWHERE[0] = ask
            if "inference" in parts:
                x = lookup_batch(images, idx, table)
                x[...] = 0
                net.predict_proba(x[: model.SMALL_BATCH + 1])
                net.predict_proba(x[:1])
    return run


def plan(batchnorm: str, optimizer: str = "adam", dtype=np.float32, augment: bool = True, fallback: bool = True,
         ranks: bool = False):
    """(first, later): what the first training step needs (with its augmentation when `augment`) and
    the cache lacks, then what only validation needs ({dispatcher: {argument types}} each); (None,
    None) when the cache cannot be read. The steps' fallback path (shard by shard, phase by phase)
    counts for MPI `ranks`, which always take it, and with `fallback` (a run with compile workers)
    when the one-call step itself is missing: the run takes that path only while a worker compiles
    it (planned otherwise, a worker would compile it for a run that never waits for it)."""
    parts = ("augment",) * augment + ("step",)
    first = missing(record_calls(training_run(batchnorm, optimizer, dtype, parts)))
    if first is not None and (ranks or (fallback and any(is_background(d) for d in first))):
        path = missing(record_calls(training_run(batchnorm, optimizer, dtype, ("fallback",))))
        if path is None:
            return None, None
        for d, sigs in path.items():                 # (the step's dry run is not made again)
            first[d] = first.get(d, set()) | sigs
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
