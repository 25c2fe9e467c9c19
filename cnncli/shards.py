"""One training step cut into fixed micro-shards of distributed.SHARD images, run on the worker threads
and summed through the comm in one fixed tree, so the bits depend on neither the thread count nor
the number of ranks. Not the API (model.Network.train_step calls run_step) nor the layers
(passes.py).
"""

# One training step cut into fixed micro-shards of distributed.SHARD images: each shard runs on its
# own workspace on the worker threads, writes its parameter gradient into its own row, and the rows,
# the losses and (with BN) the per-shard partial statistics are summed through the comm in one fixed
# tree, so the bits depend neither on the thread count nor on the number of ranks. With BN in one
# process the whole step is one numba call per thread (kernels/bnstep.py: the same kernels and
# trees, the threads meeting at spin barriers); with ranks, or while a pre-compile worker still
# builds bnstep's kernel, its phases run through run_phases (bnphases.py builds them).
#
# Shapes: B images in the global batch, S = ceil(B / SHARD) shards, L of them on this rank
# (comm.shard_block), P parameters, C classes; D statistics of a BN layer (units or channels).

from __future__ import annotations

import itertools
from functools import partial

import numpy as np

from . import arch, bnphases, passes
from .arch import FC1_UNITS, param_specs
from .distributed import SHARD, shard_count, shard_slice
from .kernels import bnstep, fcgrad, plainstep
from .kernels.augment_draw import GIVEN, MADE, no_input
from .kernels.reduce import RowTree, column_tasks, tree_sum_into
from .kernels.sync import ABORT
from .kernels.threads import max_threads, run, run_phases, run_together, workers


def _merged(spans, names):
    """[(c0, c1)] column ranges of the named tensors (spec order) in a gradient row, adjacent ones
    merged into one range."""
    ranges = []
    for name in names:
        c0, c1 = spans[name]
        if ranges and ranges[-1][1] == c0:
            ranges[-1] = (ranges[-1][0], c1)
        else:
            ranges.append((c0, c1))
    return ranges


class _ShardSlot:
    """A full no-BN shard's place in Plan.ws: its size and its view of the batch's probs."""

    def __init__(self, n):
        self.n, self.probs = n, None


class Plan:
    """Everything a step of B images needs on this rank (shards [lo, hi)), allocated once."""

    def __init__(self, B, lo, hi, num_classes, batchnorm, dtype):
        self.B, self.S, self.lo, self.hi = B, shard_count(B), lo, hi
        self.slices = [shard_slice(i, B) for i in range(lo, hi)]
        first = self.slices[0].start if self.slices else 0
        n_local = sum(s.stop - s.start for s in self.slices)
        self.probs = np.empty((n_local, num_classes), dtype)                # (n_local, C) this rank's
        self.ws = []
        if batchnorm != "none":
            # one workspace for this rank's images, the shards' workspaces rows of it (bnstep.py
            # runs a whole step on the big one; the per-shard phases use the views)
            self.big = passes.Workspace(n_local, num_classes, batchnorm, dtype)
            self.big.probs = self.probs
            self.dwt2s = np.empty((hi - lo, 6, 5, 5, 16), dtype)             # (L,6,5,5,16) each shard's
            self.ws = [self.big.rows(s.start - first, s.stop - first, self.dwt2s[j])
                       for j, s in enumerate(self.slices)]
        else:
            # a full shard runs on a spare full-size workspace (_borrow) and needs only its probs
            # view here; a short last shard gets a workspace of its own (a batch's worth of
            # workspaces, ~160 KB per image, would sit unused in the one-call step)
            for s in self.slices:
                n = s.stop - s.start
                ws = passes.Workspace(n, num_classes, batchnorm, dtype) if n != SHARD else _ShardSlot(n)
                ws.probs = self.probs[s.start - first:s.stop - first]       # a view: no copy later
                self.ws.append(ws)
        self.args = (num_classes, batchnorm, dtype)
        self.bounds = np.array([s.start - first for s in self.slices] + [n_local], np.int64)   # (L+1,)
        self.fused_args = None      # (the network's arrays they were built for, the one-call step's arguments)
        self.scratch = None         # without BN: the one-call step's per-thread workspace (made on first use)
        self.fc_stack = None        # the one-call steps' stacks for fc1's gradient tree (_fc_stack)
        self.no_input = None        # the one-call steps' input arguments when they make no input (_no_input)
        self.bn_scratch = None      # with BN: the one-call step's per-thread scratch (_bn_scratch)
        self.xin = self.big.xin if batchnorm != "none" else None   # (B,1,32,32) a one-call step's transformed input
        self.spare = []     # without BN: full-size workspaces reused shard after shard (kept in cache)
        specs = param_specs(num_classes, batchnorm)
        spans = arch.spans(specs)
        self.rows = np.zeros((hi - lo, sum(c1 - c0 for c0, c1 in spans.values())), dtype)   # (L, P) each
        self.grads = [arch.views(self.rows[j], specs) for j in range(hi - lo)]       # shard's; BN's stay 0
        # the columns shards write: every parameter but BN's gamma/beta (their gradients are the
        # batch's BN sums, set after the tree)
        self.segments = _merged(spans, [n for n in spans if not n.startswith("bn")])
        # the one-call steps': where the layers' tensors start in a gradient row
        self.offs = np.array([spans[n][0] for n in ("conv1.w", "conv1.b", "conv2.w", "conv2.b",
                                                    "fc1.w", "fc1.b", "fc2.w", "fc2.b")], np.int64)   # (8,)
        # bnstep's: where BN's gamma and beta gradients start in the gradient buffer
        self.bn_offs = np.array([spans[f"bn{k}.{n}"][0] for k in (1, 2, 3) for n in ("gamma", "beta")]
                                if batchnorm != "none" else [], np.int64)                              # (6,)
        # (K,2) plainstep's tree of the rows: all their columns but fc1's (it sums those as it makes them)
        self.chunks_plain = np.array(column_tasks(_merged(spans, [n for n in spans if n not in ("fc1.w", "fc1.b")
                                                                  and not n.startswith("bn")])), np.int64).reshape(-1, 2)
        self.sync = np.zeros(max(bnstep.sync_size(max_threads(), hi - lo), plainstep.SYNC_SIZE), np.int64)
        self.tree = partial(tree_sum_into, segments=self.segments)   # the rows' tree over ranks, threaded
        self.rowtree = RowTree(self.rows, self.segments)             # ... in one process, as rows finish
        self.loss = np.zeros((hi - lo, 1))                  # (L, 1) float64 sum of weight * loss
        self.ones = np.ones(B)                              # (B,) the weights when none are given
        self.fwd, self.bwd, self.bwdtree, self.stats, self.count = {}, {}, {}, {}, {}
        self.bn_grads = {}                                  # layer -> (sum dy, sum dy*xhat): the phase path's
        self.sums = {}                                      # layer -> (2D,) float64 bnstep's sums
        # the conv BN layers' coefficients for the fused kernels (bnpool), set once per step
        self.coef = {1: np.zeros((6, 6 * 1024), dtype), 2: np.zeros((6, 16 * 256), dtype)} \
            if batchnorm != "none" else {}
        self.shard_counts = {}                              # layer -> (S,) values per statistic in each shard
        self.no_running = np.empty(0, dtype)                # "no running statistics" for bn_stats_into
        self.moments = {}                                   # layer -> (2D,) float64 the batch's [sum | M2]
        if batchnorm != "none":
            channel = batchnorm == "channel"
            all_slices = [shard_slice(i, B) for i in range(self.S)]
            for k, (units, maps, positions) in ((1, (6144, 6, 1024)), (2, (4096, 16, 256)), (3, (65, 65, 1))):
                d = maps if channel else units
                self.count[k] = B * (positions if channel else 1)   # values per statistic
                self.fwd[k] = np.zeros((hi - lo, 2 * d))             # (L, 2D) float64 [sum | M2] per shard
                self.shard_counts[k] = np.array([(sl.stop - sl.start) * (positions if channel else 1)
                                                 for sl in all_slices], np.float64)   # (S,) every rank's
                self.bwd[k] = np.zeros((hi - lo, 2 * d))             # (L, 2D) sums of dy, dy*xhat
                self.bwdtree[k] = RowTree(self.bwd[k])               # their tree as rows finish (one process)
                self.stats[k] = np.zeros((3, d))                     # mean, var, invstd
                self.moments[k] = np.zeros(2 * d)
                self.sums[k] = np.zeros(2 * d)                       # the batch's sums of dy, dy*xhat
            # bnstep's: its clock marks, and the rows' tree in tasks by layer (bnstep sums each
            # layer's columns in the phase after the one that finishes them; fc1's never go
            # through the rows there): [fc2, conv2, conv1]
            self.clock = np.zeros((max_threads(), 2, len(bnstep.SEGMENTS)), np.int64)
            self.chunks = [np.array(column_tasks(_merged(spans, group)), np.int64).reshape(-1, 2)   # (K,2)
                           for group in (("fc2.w", "fc2.b"), ("conv2.w", "conv2.b"),
                                         ("conv1.w", "conv1.b"))]


def each(fn, count):
    """fn(j) for j in range(count) on the worker threads and this one (threads.run); fn(j) writes
    only shard j's workspace and rows, so who runs which j changes no bit."""
    run(fn, count)


def _borrow(plan, j):
    """A workspace for shard j of a step without BN, where nothing outlives the shard: a spare
    full-size one (the last thread's, still in cache; at most one per thread is ever made) with
    shard j's probs view, or shard j's own when it is short (full shards have none: _ShardSlot).
    The arithmetic is the same."""
    ws = plan.ws[j]
    if ws.n != SHARD:
        return ws
    try:
        spare = plan.spare.pop()
    except IndexError:
        spare = passes.Workspace(SHARD, *plan.args)
    spare.probs = ws.probs
    return spare


def run_step(net, plan, x, labels, weights, comm, backward=True, transform=None):
    """A training step (forward only when backward=False) of the batch x (B,1,32,32) on this
    rank's shards: net.grads overwritten (all of them, every rank the same), BN running statistics
    updated when kept. transform(s, x[s], out), when given, makes the input of the images s (a
    shard's slice of the batch) into out, inside the shard's task (x may be None: transform(s,
    None, out)): the trainer's lookup and augmentation run on the worker threads, shard by shard,
    while the images are in cache, and each rank makes only its own shards' input. Returns the
    weighted mean loss (float64) over the global batch."""
    P, bn = net.params, net.batchnorm != "none"
    w = plan.ones if weights is None else weights
    scale = 1.0 / plan.B
    L = len(plan.ws)
    # the step in one numba call per thread (plainstep.py, bnstep.py) unless ranks share it or a
    # pre-compile worker still builds that kernel
    fused = comm.size == 1 and not _compiling(bnstep.bn_step_into if bn else plainstep.plain_step_into)
    # one process: each shard's finished row goes into the tree at once (plan.rowtree); ranks: sum_shards
    done = plan.rowtree.done if (backward and comm.size == 1) else (lambda j: None)
    plan.rowtree.reset()
    for tree in plan.bwdtree.values():
        tree.reset()

    def inputs(j, ws):
        """Shard j's input (n,1,32,32): its slice of x, or the transform's output in ws.xin."""
        s = plan.slices[j]
        if transform is None:
            return x[s]
        transform(s, None if x is None else x[s], ws.xin)
        return ws.xin

    def targets(j):
        s = plan.slices[j]
        return labels[s], w[s]

    if fused:
        kernel, args = (bnstep.bn_step_into, _bnstep_arrays(net, plan)) if bn else \
            (plainstep.plain_step_into, _plainstep_arrays(net, plan))
        _one_call_step(plan, kernel, args, x, labels, w, scale, backward, transform)
    elif not bn:
        def plain(j):
            ws = _borrow(plan, j)
            xs, (ls, wj) = inputs(j, ws), targets(j)
            plan.loss[j, 0] = passes.shard_step_plain(P, plan.grads[j], ws, xs, ls, wj, scale, backward)
            if backward:
                done(j)
            if ws is not plan.ws[j]:
                plan.spare.append(ws)                 # list.append/pop are atomic (GIL)
        plain.__name__ = "shard step (no BN)"
        each(plain, L)
    else:
        sums3, back = bnphases.backward_phases(net, plan, comm, done) if backward else (None, [])
        phases = bnphases.forward_phases(net, plan, comm, inputs, targets, scale, backward, then=sums3) + back
        # one job for all the phases in one process; with ranks the afters' collectives stay on this thread
        run_phases(phases, L, on_caller=comm.size > 1)
    loss = float(comm.sum_shards(plan.loss, plan.S, tree=tree_sum_into)[0]) / plan.B
    if backward:
        if fused:
            return loss                           # the one-call step wrote every gradient into net.grads.flat
        if comm.size == 1:
            for c0, c1 in plan.segments:
                net.grads.flat[c0:c1] = plan.rowtree.result()[c0:c1]
        else:
            comm.sum_shards(plan.rows, plan.S, out=net.grads.flat, tree=plan.tree)
        for k, (sdy, sdyx) in plan.bn_grads.items():
            net.grads[f"bn{k}.beta"].reshape(-1)[...] = sdy
            net.grads[f"bn{k}.gamma"].reshape(-1)[...] = sdyx
    return loss


# precompile.py installs its compiling_elsewhere here when imported (this core imports nothing above it).
COMPILING_ELSEWHERE = [None]


def _compiling(kernel):
    """True while a pre-compile worker compiles this one-call step's kernel on a first run: the
    steps meanwhile run shard by shard or phase by phase (the same kernels, the same bits) instead
    of waiting ~20 s for it."""
    ask = COMPILING_ELSEWHERE[0]
    return ask is not None and ask(kernel)


def _one_call_step(plan, kernel, args, x_in, labels, w, scale, backward, transform):
    """A step in one process as one call of kernel (plainstep.py's or bnstep.py's) on every thread
    at once (the same kernels and trees as the per-shard and phase paths, so the same bits). A
    transform with kernel_args (augment.StepInput: the trainer's lookup and augmentation) is made
    inside the kernel, each shard's input in its own task; any other transform each thread first
    runs on its part of the input, in the same job."""
    made = getattr(transform, "kernel_args", None)
    if transform is not None:
        if plan.xin is None:
            plan.xin = np.empty((plan.probs.shape[0], 1, 32, 32), plan.probs.dtype)   # (B,1,32,32)
        x = plan.xin
    else:
        x = np.ascontiguousarray(x_in)                                                # (B,1,32,32)
        if not x.flags.writeable:     # (the step kernel's x is writable: it makes the input there when augmenting)
            x = x.copy()
    if made is None:
        made = (GIVEN if transform is None else MADE,) + _no_input(plan)
    elif made[3].dtype != x.dtype:
        raise ValueError(f"the input's table is {made[3].dtype}, the network {x.dtype}")
    if kernel is bnstep.bn_step_into and plan.sync.shape[0] < bnstep.sync_size(workers()[1], len(plan.bounds) - 1):
        raise RuntimeError(f"the plan's sync array ({plan.sync.shape[0]}) is too short for this step")   # (no bounds checks inside)
    plan.sync[:] = 0
    ticket = itertools.count()
    before = made[0] == MADE

    def job(t):
        """On each of the t threads: its part of the input when a Python transform makes it (the
        transform treats each image on its own, so any split gives the same input), then the
        step, which first waits for every part."""
        if before:
            j, n = next(ticket), x.shape[0]            # (itertools.count's next is atomic under the GIL)
            part = slice(n * j // t, n * (j + 1) // t)
            transform(part, None if x_in is None else x_in[part], x[part])
        kernel(plan.sync, t, made[0], plan.bounds, backward, x, labels, w, scale, *made[1:], *args)

    job.__name__ = f"one call per thread ({getattr(kernel, '__name__', 'step')})"   # (kernel_profile's row)
    run_together(job, abort=lambda: plan.sync.__setitem__(ABORT, 1))


def _no_input(plan):
    """The one-call steps' input arguments when they make no input (augment_draw.no_input), made
    once per plan."""
    if plan.no_input is None:
        plan.no_input = no_input(plan.probs.dtype)
    return plan.no_input


def _cached_args(net, plan, build):
    """A one-call step's arguments after (bounds, backward, x, labels, weights, scale): built by
    build() on a plan's first step and again only when the network holds other params, grads or
    buffers objects (the functional API hands its own in)."""
    key = (net.params, net.grads, net.buffers)
    if plan.fused_args is None or not all(a is b for a, b in zip(plan.fused_args[0], key)):
        plan.fused_args = (key, build())
    return plan.fused_args[1]


def _plainstep_arrays(net, plan):
    """plain_step_into's arguments after scale: the scratch rows per thread, the parameters, the
    per-thread scratch workspace and the plan's arrays."""
    def build():
        if plan.scratch is None:
            T, B, dtype = max_threads(), plan.probs.shape[0], plan.probs.dtype
            plan.scratch = passes.Workspace(T * SHARD, *plan.args)
            plan.dwt2s_t = np.empty((T, 6, 5, 5, 16), dtype)                  # (T,6,5,5,16)
            plan.p2_batch = np.empty((B, 16, 8, 8), dtype)                     # (B,16,8,8) fc1's input
            plan.dz3_batch = np.empty((B, FC1_UNITS), dtype)                    # (B,65) its output's gradient
        P, s = net.params, plan.scratch
        return (SHARD, P["conv1.w"], P["conv1.b"], P["conv2.w"], P["conv2.b"], P["fc1.w"], P["fc1.b"],
                P["fc2.w"], P["fc2.b"],
                s.xp1, s.z1, s.xp2, s.arg1, s.z2, plan.p2_batch, s.arg2, s.z3, s.a3, s.z4, s.dz4, s.da3,
                plan.dz3_batch, s.dflat, s.dz2, s.dp1, s.dz1, s.dzp2, s.dzt2, plan.dwt2s_t, *_fc_stack(plan),
                plan.probs, plan.rows, plan.offs, plan.loss, plan.chunks_plain, net.grads.flat)
    return _cached_args(net, plan, build)


def _fc_stack(plan):
    """The one-call steps' per-thread stacks for fc1's gradient tree (fcgrad.fc_grads_tree_task): stk
    (T,PAIRS*LEVELS,128) and lev (T,PAIRS*LEVELS) int64, made on first use."""
    if plan.fc_stack is None:
        T = max_threads()
        rows = fcgrad.PAIRS * fcgrad.LEVELS
        plan.fc_stack = (np.empty((T, rows, 128), plan.probs.dtype), np.empty((T, rows), np.int64))
    return plan.fc_stack


def _bn_scratch(plan):
    """bn_step_into's per-thread scratch, made on first use: SHARD rows per thread of the arrays a
    shard's backward task makes and uses up (dz2, dz1, dzp2 with its zero border, dzt2), and its
    conv2 weight scratch (T,6,5,5,16)."""
    if plan.bn_scratch is None:
        T, dtype = max_threads(), plan.probs.dtype
        n = T * SHARD
        plan.bn_scratch = (SHARD, np.empty((n, 16, 16, 16), dtype), np.empty((n, 6, 32, 32), dtype),
                           np.zeros((n, 16, 20, 20), dtype), np.empty((n, 256, 16), dtype),
                           np.empty((T, 6, 5, 5, 16), dtype))
    return plan.bn_scratch


def _bnstep_arrays(net, plan):
    """bn_step_into's arguments after (bounds, backward, x, labels, weights, scale): the network's
    parameters, gradients and running statistics and the plan's arrays, built on a plan's first
    step and again only when the network holds other params, grads or buffers objects (the
    functional API hands its own in)."""
    return _cached_args(net, plan, lambda: _bnstep_build(net, plan))


def _bnstep_build(net, plan):
    P, G, big = net.params, net.grads, plan.big
    eps, m = float(net.eps), float(net.momentum)
    running = []                                  # rm1, rv1, rm2, ... (empty when none are kept)
    for k in (1, 2, 3):
        if net.buffers is not None:
            running += [net.buffers[f"bn{k}.running_mean"].reshape(-1), net.buffers[f"bn{k}.running_var"].reshape(-1)]
        else:
            running += [plan.no_running, plan.no_running]
    keep = plan.no_running.dtype.type(1 - m)
    unbias = [m * plan.count[k] / (plan.count[k] - 1) if plan.count[k] > 1 else 0.0 for k in (1, 2, 3)]
    (g1, be1), (g2, be2), (g3, be3) = (bnphases.gamma_beta(net, k) for k in (1, 2, 3))
    args = (P["conv1.w"], P["conv1.b"], P["conv2.w"], P["conv2.b"], P["fc1.w"], P["fc1.b"], P["fc2.w"], P["fc2.b"],
            g1, be1, g2, be2, g3, be3,
            big.xp1, big.z1, big.xp2, big.arg1, big.z2, big.p2, big.arg2, big.z3, big.xhat3, big.y3, big.a3,
            big.z4, big.probs, big.dz4, big.da3, big.dz3, big.dy3, big.dflat, big.dp1, *_bn_scratch(plan),
            *_fc_stack(plan),
            # the backward's rows are the forward's arrays (bnstep writes layer k's sums only after its
            # statistics phase has read its moments' rows): per unit at batch 256, 5.3 MB of rows, not 10.6
            plan.fwd[1], plan.fwd[2], plan.fwd[3], plan.fwd[1], plan.fwd[2], plan.fwd[3],
            plan.shard_counts[1], plan.shard_counts[2], plan.shard_counts[3],
            float(plan.count[1]), float(plan.count[2]), float(plan.count[3]),
            plan.stats[1], plan.stats[2], plan.stats[3], plan.moments[1], plan.moments[2], plan.moments[3],
            plan.sums[1], plan.sums[2], plan.sums[3], plan.coef[1], plan.coef[2],
            eps, keep, m, *unbias, *running,
            plan.rows, plan.offs, plan.bn_offs, plan.loss, *plan.chunks, G.flat, plan.clock)
    return args
