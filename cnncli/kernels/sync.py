"""Synchronization between the threads of one numba job without the GIL: atomic add and load, work
counters and a spin barrier. Not a thread pool (threads.py starts the threads), not a lock:
nothing here protects data, the callers write disjoint slices between barriers.
"""

# Synchronization between the threads of one numba job without the GIL: atomic add and load on an
# int64 array, a counter each thread takes work items from, and a spin barrier (kernels/bnstep.py:
# a BN training step's phases in one nogil call per thread). Spinning yields the core (sched_yield)
# after a short while, so a thread the OS delays costs its partners time, not a deadlock.
#
# Layout of a job's `sync` array (int64, zeroed before the job): [0] threads arrived at the barrier,
# [1] the barrier's generation, [2] nonzero once the job is aborted (a thread failed before it
# arrived: the waiting ones return instead of waiting forever), [3 + k] the next item of counter k.

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

ARRIVED, GENERATION, ABORT, COUNTERS = 0, 1, 2, 3
SPINS = 2000            # pause instructions before each sched_yield while waiting at a barrier


def _slot(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [context.cast(builder, idx, types.intp, types.intp)])


def _check(arr):
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        raise TypeError(f"sync: need a 1-D int64 array, got {arr}")


@intrinsic
def atomic_add(typingctx, arr, idx, val):
    """arr[idx] += val atomically (sequentially consistent); returns the value before."""
    _check(arr)

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")
    return types.int64(arr, types.intp, types.int64), codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    """arr[idx], read atomically (sequentially consistent)."""
    _check(arr)

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8)
    return types.int64(arr, types.intp), codegen


@intrinsic
def atomic_store(typingctx, arr, idx, val):
    """arr[idx] = val atomically (sequentially consistent)."""
    _check(arr)

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        builder.store_atomic(context.cast(builder, args[2], sig.args[2], types.int64), ptr, "seq_cst", 8)
        return context.get_dummy_value()
    return types.none(arr, types.intp, types.int64), codegen


@intrinsic
def cpu_relax(typingctx):
    """A spin-wait hint (x86 `pause`; nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        import platform

        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def sched_yield(typingctx):
    """The C library's sched_yield(): let another runnable thread have this core (POSIX; on
    Windows nothing: the wait keeps spinning)."""
    def codegen(context, builder, sig, args):
        import sys

        if sys.platform != "win32":
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def cycles(typingctx):
    """The CPU's time-stamp counter (llvm.readcyclecounter; 0 where there is none): for timing
    marks inside a kernel, converted to seconds by the caller (cycle_rate)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@njit(cache=True, nogil=True)
def cycles_now():
    # the time-stamp counter, from Python
    return cycles()


def cycle_rate(seconds: float = 0.02) -> float:
    """Counter ticks per second, measured against time.perf_counter over `seconds`."""
    import time

    cycles_now()
    c0, t0 = cycles_now(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass
    return (cycles_now() - c0) / (time.perf_counter() - t0)


@njit(inline="always")
def take(sync, k):
    """The next item of counter k (0, 1, 2, ... across all threads, each once)."""
    return atomic_add(sync, COUNTERS + k, 1)


@njit(inline="always")
def next_shard(sync, k, bounds):
    """The next shard (counter k) of bounds (L+1,) (shard j's images are bounds[j]:bounds[j + 1]):
    (j, a, b), or j = -1 once every shard is taken."""
    j = take(sync, k)
    if j >= bounds.shape[0] - 1:
        return -1, 0, 0
    return j, bounds[j], bounds[j + 1]


@njit(inline="always")
def own_item(sync, base, n, tid, T, rev):
    """The next of n items for thread tid of T: first from its own share (items n*tid//T ..
    n*(tid+1)//T - 1, in order, or from the last one down when rev), then from the other threads'
    shares (tid+1, tid+2, ... mod T) the same way. Share r's items are counted in sync[base + r]
    (T slots, zeroed). The item, or -1 once every item is taken. A thread meets the items it had
    the last time, whose arrays are likely still in its cache; an item's arithmetic must not
    depend on which thread runs it."""
    for s in range(T):
        r = (tid + s) % T
        lo, hi = n * r // T, n * (r + 1) // T
        if lo >= hi:
            continue
        i = atomic_add(sync, base + r, 1)
        if lo + i < hi:
            return hi - 1 - i if rev else lo + i
    return -1


@njit(inline="always")
def own_shard(sync, base, bounds, tid, T, rev):
    """own_item over the shards of bounds (L+1,) (shard j's images are bounds[j]:bounds[j + 1]): a
    thread meets the shards it had in the phase before. (j, a, b), or j = -1 once every shard is
    taken."""
    j = own_item(sync, base, bounds.shape[0] - 1, tid, T, rev)
    if j < 0:
        return -1, 0, 0
    return j, bounds[j], bounds[j + 1]


@njit(inline="always")
def arrive(sync, T):
    """Arrive at the barrier: -1 on the last of the T threads to arrive (it alone runs on, and must
    call release() to let the others go), else the generation to wait() on."""
    gen = atomic_load(sync, GENERATION)
    if atomic_add(sync, ARRIVED, 1) == T - 1:
        atomic_store(sync, ARRIVED, 0)
        return -1
    return gen


@njit(inline="always")
def release(sync):
    """The last arriver lets the others past the barrier; what it wrote before is visible to them."""
    atomic_add(sync, GENERATION, 1)


@njit(inline="always")
def wait(sync, gen):
    """Spin until the barrier's generation leaves gen (pause, then sched_yield after SPINS);
    returns True when the job was aborted instead (the caller returns at once)."""
    spins = 0
    while atomic_load(sync, GENERATION) == gen:
        if atomic_load(sync, ABORT) != 0:
            return True
        spins += 1
        backoff(spins)
    return False


@njit(inline="always")
def backoff(i):
    """The i-th wait of a spin (i from 0): a pause for the first SPINS, then sched_yield."""
    if i < SPINS:
        cpu_relax()
    else:
        sched_yield()


@njit(inline="always")
def barrier(sync, T):
    """Wait until all T threads of the job have arrived; True when the job was aborted instead."""
    gen = arrive(sync, T)
    if gen < 0:
        release(sync)
        return False
    return wait(sync, gen)


@njit(cache=True, nogil=True)
def spin_until(flags, k, value, yields):
    # flags (F,) int64: spin until flags[k] >= value (pause SPINS times, then at most `yields`
    # sched_yields), without the GIL   ->   True once it is, False when the spins ran out first
    # (threads.py's workers and callers: a wait of a few microseconds costs no sleep and wake-up)
    for i in range(SPINS + yields):
        if atomic_load(flags, k) >= value:
            return True
        backoff(i)
    return atomic_load(flags, k) >= value


@njit(cache=True, nogil=True)
def store_flag(flags, k, value):
    # flags[k] = value, atomically: what the thread wrote before is visible to whoever sees it
    atomic_store(flags, k, value)


@njit(cache=True, nogil=True)
def own_shards_into(sync, T, bounds, rounds, taken):
    # a test job for own_shard: `rounds` phases of the shards of bounds, every other one in reverse,
    # with a barrier after each; taken (rounds, L) int64 zeroed   ->   taken[r, j] = how many times
    # shard j was taken in round r (1), taken[r, L + j] = 1 + the thread that took it
    tid = take(sync, 0)
    for r in range(rounds):
        while True:
            j, a, b = own_shard(sync, COUNTERS + 1 + r * T, bounds, tid, T, r % 2 == 1)
            if j < 0:
                break
            atomic_add(taken[r], j, 1)
            taken[r, bounds.shape[0] - 1 + j] = tid + 1
        if barrier(sync, T):
            return


@njit(cache=True, nogil=True)
def count_together_into(sync, T, rounds, items, out):
    # a test job for the barrier and the counter: `rounds` rounds, each hands out `items` items
    # (counter r) to whichever thread takes them, out[r, i] = 1 + (the value of out[r - 1, i] that
    # any thread can see after the barrier); the last thread to arrive marks a wrong value -1
    #   ->   out (rounds, items) int64 all equal to r + 1
    for r in range(rounds):
        while True:
            i = take(sync, r)
            if i >= items:
                break
            prev = out[r - 1, items - 1 - i] if r > 0 else 0
            out[r, i] = prev + 1
        gen = arrive(sync, T)
        if gen < 0:                   # the last thread checks the round alone, then lets the others on
            for i in range(items):
                if out[r, i] != r + 1:
                    out[r, i] = -1
            release(sync)
        elif wait(sync, gen):
            return
