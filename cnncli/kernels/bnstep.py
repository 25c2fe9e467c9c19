"""A whole BN training step in one nogil numba call per thread (one process): bnphases.py's phases,
the threads meeting at spin barriers (sync.py), the same kernels, arrays and fixed trees, so the
same bits. Not the checks (shards.Plan built the arrays), not the per-rank gather.
"""

# A whole BN training step in one nogil numba call per thread (one process): the phases of
# bnphases.py's BN step -- each shard's segments up to a BN, the batch's statistics, the next
# segments -- with the threads meeting at spin barriers (sync.py) instead of in Python, so a step
# takes the GIL once per thread, not once per kernel. Each thread first takes the shards of its own
# share (sync.own_shard: the same share in every phase, every other phase in reverse order, so a
# thread starts a phase on the arrays it wrote last, still in its L2), then any left in the others';
# each shard runs the very kernels, on the very arrays, that bnphases.py's per-shard
# tasks run (segments.py, bnpool, fc, head; its first task makes its input when the trainer's lookup
# and augmentation are passed in: augment_draw.make_input_into), and every sum over shards is the
# same fixed tree: the BN rows' trees are made as the rows finish (bntree.bn_moments_rows_done,
# reduce.tree_rows_done: the thread that completes a node merges it) up to nodes of about a thread's share of shards
# (reduce.tree_top), and the statistics phase after finishes them column by column on every thread
# (bn_moments_tree_range, tree_cols_step), with bn_moments_tree_into's and tree_sum's nodes, so
# the bits depend neither on the thread count nor on this path: with MPI ranks bnphases.py runs the
# same kernels phase by phase.
#
# Shapes: B images (this process's batch), L shards (bounds (L+1,) their first images), C classes,
# P parameters; the workspace arrays are passes.Workspace's with n = B (a shard takes rows a:b).

from __future__ import annotations

import numpy as np
from numba import njit

from . import bncoef, bnpool, bnstats, bntree, segments
from .augment_draw import MADE, make_input_into
from .batchnorm import bn_unit_backward_given_into
from .fc import fc_dx_loop_into, fc_forward_loop_into
from .fcgrad import fc_grads_tree_task, fc_grads_tree_tasks
from .head import bn_head_into
from .reduce import LEVELS, tree_chunks, tree_cols_step, tree_rows_done, tree_slots, tree_top
from . import sync as _sync
from .sync import barrier, cycles, own_item, own_shard, take

# the counters of sync.py's array: the rows' trees' column chunks by layer and fc1's gradient tasks;
# TID numbers the threads (for the clock marks)
TREE, TID, TREE_FC, TREE_C2, FC1 = range(5)
SYNC_COUNTERS = _sync.COUNTERS + 5    # the barrier's slots and those counters; then, T each, the
F1, F2, F3, HEAD, B3, B2, B1 = range(7)   # shard phases' shares (sync.own_item): sync[SYNC_COUNTERS + F1*T + t],
S1, S2, S3, T3, T2, T1 = range(7, 13)     # and the statistics and sums phases' shares of their chunks
SHARES = 13
ROW_TREES = 6                       # then fwd1, fwd2, fwd3, bwd3, bwd2, bwd1's tree_slots(L) node counters each


def sync_size(T: int, L: int) -> int:
    """The length of bn_step_into's sync array for T threads and L shards."""
    return SYNC_COUNTERS + SHARES * T + ROW_TREES * tree_slots(L)

# the step's segments in order, each ended by a barrier (the last by the call's end): clock marks
SEGMENTS = ("forward to BN1's input, its moments", "BN1's statistics",
            "BN1 .. BN2's input, its moments", "BN2's statistics",
            "BN2 .. BN3's input, its moments", "BN3's statistics",
            "head (BN3 .. loss .. BN3's dy)", "BN3's sums",
            "backward BN3 .. BN2's sums", "BN2's sums",
            "backward BN2 .. BN1's sums (+ fc1's gradient, fc2 rows' tree)", "BN1's sums",
            "backward from BN1 (+ conv2 rows' tree)", "conv1 rows' tree")
CHUNK = 512                         # statistics per chunk of a BN layer's batch statistics

# _forward_stats, _backward_sums and _meet are functions bn_step_into calls, compiled once, rather than
# inlined at each of their 3, 3 and 13 call sites: numba inlines (inline="always") by copying the
# callee's IR into every site, and these copies made most of bn_step_into's compile time. Each runs
# once per phase and thread, so the calls cost nothing measurable; the arithmetic is the same. _meet's
# segment number is passed as np.int64: numba types a Python int constant passed to an njit function as
# a literal and compiles the function once per value (13 copies of _meet, 3 s of compile). with_coef
# stays a literal (two copies of _forward_stats and _backward_sums): as a runtime bool the per-unit step
# ran 4-7% slower (scripts/bench_steps_ab.py, batch 32 and 64).


@njit(nogil=True)
def _forward_stats(sync, base, tid, T, fwd, counts, step, M, eps, stats, keep, m, unbias, rm, rv, moments, gamma,
                   beta, coef, with_coef):
    # chunks of CHUNK statistics, each thread's own share first (own_item from sync[base]: the same
    # chunks as the step before, whose running statistics are likely still in its cache), then any
    # left in the others'; the chunk's arithmetic is the same on any thread: the batch's moments (2D,) from
    # the top of the shard rows' tree (fwd (L,2D): the nodes the climbs left in rows 0, step, ..)
    # -> stats (3,D) (mean, var, invstd),
    # running statistics updated when rm has D values (bnphases.statistics), and with_coef the
    # fused kernels' coefficients (bnpool); each statistic's operations are the whole-layer kernels'
    D = stats.shape[1]
    n = -(-D // CHUNK)
    while True:
        c = own_item(sync, base, n, tid, T, False)
        if c < 0:
            break
        d0, d1 = c * CHUNK, min(D, (c + 1) * CHUNK)
        bntree.bn_moments_tree_range(fwd, counts, moments, d0, d1, step)   # the tree's top
        bnstats.bn_stats_range(moments, M, eps, stats, keep, m, unbias, rm, rv, d0, d1)
        if with_coef:
            bncoef.bn_coef_forward_range(stats[0], stats[2], gamma, beta, coef, d0, d1)


@njit(nogil=True)
def _backward_sums(sync, base, tid, T, bwd, step, sums, stats, gamma, M, coef, with_coef, ggamma, gbeta):
    # chunks as above (the shares of _forward_stats: a thread sums the chunks whose statistics it
    # made): the batch's [sum dy | sum dy*xhat] sums (2D,) from the top of the shard
    # rows' tree (bwd (L,2D): rows 0, step, ..), which are beta's and gamma's gradients (ggamma,
    # gbeta (D,) views of the gradient buffer: the sums rounded to the dtype), and with_coef the
    # backward coefficients
    D = stats.shape[1]
    n = -(-D // CHUNK)
    while True:
        c = own_item(sync, base, n, tid, T, False)
        if c < 0:
            break
        d0, d1 = c * CHUNK, min(D, (c + 1) * CHUNK)
        tree_cols_step(bwd, step, sums, d0, d1)             # the tree's top
        tree_cols_step(bwd, step, sums, D + d0, D + d1)
        gb, gg, sdy, sdyx = gbeta[d0:d1], ggamma[d0:d1], sums[d0:d1], sums[D + d0:D + d1]
        for i in range(d1 - d0):                            # (views from 0: a loop LLVM vectorizes)
            gb[i] = sdy[i]
            gg[i] = sdyx[i]
        if with_coef:
            bncoef.bn_coef_backward_range(stats[2], gamma, sums, M, coef, d0, d1)


@njit(inline="always")
def _bn_grad(gflat, bn_offs, k, D, beta=0):
    # the (D,) view of gflat holding BN layer k's gamma (beta=0) or beta (beta=1) gradient
    o = bn_offs[2 * (k - 1) + beta]
    return gflat[o:o + D]


@njit(nogil=True)
def _meet(sync, T, clock, tid, k):
    # the end of segment k on this thread: its arrival mark, the barrier, its departure mark (the
    # start of segment k + 1); True when the job was aborted
    if tid < clock.shape[0]:
        clock[tid, 0, k] = cycles()
    if barrier(sync, T):
        return True
    if tid < clock.shape[0]:
        clock[tid, 1, k + 1] = cycles()
    return False


@njit(cache=True, nogil=True)
def bn_step_into(sync, T, src, bounds, backward, x, labels, weights, scale,
                 images, idx, table, fills, key, augs, pool,
                 w1, b1, w2, b2, w3, b3, w4, b4, g1, be1, g2, be2, g3, be3,
                 xp1, z1, xp2, arg1, z2, p2, arg2, z3, xhat3, y3, a3, z4, probs, dz4,
                 da3, dz3, dy3, dflat, dp1, sm, dz2, dz1, dzp2, dzt2, dwt2s, stk, lev,
                 fwd1, fwd2, fwd3, bwd1, bwd2, bwd3, counts1, counts2, counts3, M1, M2, M3,
                 stats1, stats2, stats3, moments1, moments2, moments3, sums1, sums2, sums3,
                 coef1, coef2, eps, keep, m, unbias1, unbias2, unbias3, rm1, rv1, rm2, rv2, rm3, rv3,
                 rows, offs, bn_offs, loss, chunks_fc, chunks_conv2, chunks_conv1, gflat, clock):
    # sync (sync_size(T, L),) int64 zeroed, T threads each calling this once; bounds (L+1,) int64;
    # x (B,1,32,32) the input; labels (B,) int64, weights (B,) float64, scale = 1/B; src how x is
    # made (augment_draw's kinds: GIVEN; MADE by each thread before this call, so the threads
    # first wait for one another; LOOKUP or AUGMENT: each shard's rows of x made in its first task
    # by make_input_into from images (M,32,32) uint8, idx (B,) int64, table (256,), fills (M,) or
    # (0,) float64, key uint64, augs (16,) float64 and pool (NL,) float32); the
    # parameters' views; the workspace (n = B) but for the arrays no phase hands to the next: dz2,
    # dz1, dzp2, dzt2 are a per-thread scratch (thread t's shard in rows t*sm : t*sm + sm, which
    # stay in its cache), dwt2s (T,6,5,5,16); stk (T,fcgrad.PAIRS*fcgrad.LEVELS,128) and
    # lev (T,fcgrad.PAIRS*fcgrad.LEVELS) int64 fc1's gradient tree stacks (fcgrad.fc_grads_tree_task);
    # fwd*/bwd* (L,2D) float64 the shards' rows (merged in place as they finish, up to level
    # tree_top(L, T): the statistics and sums phases finish the tree; bwdk may be fwdk itself, as
    # shards.py passes them: layer k's sums are written only after its statistics phase has read
    # fwdk, and nothing reads fwdk after that), counts* (L,) values per
    # statistic in each shard, M* the batch's; stats* (3,D),
    # moments*/sums* (2D,) float64; coef* (6,E); running statistics rm*/rv* (D,) or (0,);
    # rows (L,P) the shards' gradients, offs (8,) int64 where conv1.w, conv1.b, conv2.w, conv2.b,
    # fc1.w, fc1.b, fc2.w, fc2.b start in a row; bn_offs (6,) int64 where bn1.gamma, bn1.beta, ..,
    # bn3.beta start in gflat; chunks_* (K,2) int64 column ranges of the rows'
    # tree, by layer: each layer's columns are summed in the phase after the one that finishes
    # them, by threads done with their shards (fc2 during conv2's backward, with fc1's gradient,
    # which never goes through the rows: fc_grads_tree_task makes it summed; conv2 during conv1's,
    # conv1 at the end)   ->   loss (L,1) float64 each shard's sum of weight * loss; with
    # backward: gflat (P,) the rows' tree over chunks and BN's gamma and beta gradients, sums* the
    # batch's [sum dy | sum dy*xhat] per BN layer;
    # clock (Tc,2,14) int64: [t, 1, k] when thread t started SEGMENTS[k], [t, 0, k] when it ended
    # it (time-stamp counter, for kernel_profile; threads t >= Tc mark nothing)
    C = w4.shape[0]
    unit = g1.shape[0] != b1.shape[0]            # BN per unit (per channel: a gamma per conv1 map)
    L = bounds.shape[0] - 1
    tb, ts = SYNC_COUNTERS + SHARES * T, L + LEVELS    # the six row trees' node counters (tree_slots)
    top = tree_top(L, T)                         # the climbs stop at level top (reduce.tree_climb)
    step = 1 << top
    if src == MADE and barrier(sync, T):
        return
    tid = take(sync, TID)
    if tid < clock.shape[0]:
        clock[tid, 1, 0] = cycles()
    # forward, to BN1's input and its moments
    while True:
        j, a, b = own_shard(sync, SYNC_COUNTERS + F1 * T, bounds, tid, T, False)
        if j < 0:
            break
        make_input_into(src, images, idx[a:b], table, fills, a, key, augs, pool, x[a:b])
        segments.conv1_moments_into(x[a:b], xp1[a:b], w1, z1[a:b], b1, fwd1[j])
        bntree.bn_moments_rows_done(sync, tb, fwd1, counts1, j, top)
    if _meet(sync, T, clock, tid, np.int64(0)):
        return
    _forward_stats(sync, SYNC_COUNTERS + S1 * T, tid, T, fwd1, counts1, step, M1, eps, stats1, keep, m, unbias1,
                   rm1, rv1, moments1, g1, be1, coef1, True)
    if _meet(sync, T, clock, tid, np.int64(1)):
        return
    # BN1, pool, ELU, conv2, to BN2's input and its moments
    while True:
        j, a, b = own_shard(sync, SYNC_COUNTERS + F2 * T, bounds, tid, T, True)
        if j < 0:
            break
        segments.bn1_conv2_moments_into(z1[a:b], coef1, xp2[a:b], arg1[a:b], w2, z2[a:b], b2, fwd2[j], unit)
        bntree.bn_moments_rows_done(sync, tb + 1 * ts, fwd2, counts2, j, top)
    if _meet(sync, T, clock, tid, np.int64(2)):
        return
    _forward_stats(sync, SYNC_COUNTERS + S2 * T, tid, T, fwd2, counts2, step, M2, eps, stats2, keep, m, unbias2,
                   rm2, rv2, moments2, g2, be2, coef2, True)
    if _meet(sync, T, clock, tid, np.int64(3)):
        return
    # BN2, pool, ELU, fc1, to BN3's input and its moments
    while True:
        j, a, b = own_shard(sync, SYNC_COUNTERS + F3 * T, bounds, tid, T, False)
        if j < 0:
            break
        # (offsets as np.int64, as in segments.py)
        bnpool.bn_pool_elu_forward_into(z2[a:b], coef2, p2[a:b], np.int64(0), arg2[a:b], unit)
        fc_forward_loop_into(p2[a:b].reshape(b - a, 1024), w3, b3, z3[a:b])
        bnstats.bn_unit_moments_into(z3[a:b], fwd3[j])
        bntree.bn_moments_rows_done(sync, tb + 2 * ts, fwd3, counts3, j, top)
    if _meet(sync, T, clock, tid, np.int64(4)):
        return
    _forward_stats(sync, SYNC_COUNTERS + S3 * T, tid, T, fwd3, counts3, step, M3, eps, stats3, keep, m, unbias3,
                   rm3, rv3, moments3, g3, be3, coef2, False)
    if _meet(sync, T, clock, tid, np.int64(5)):
        return
    # the head: BN3, ELU, fc2, the loss (and down to BN3's dy and its sums)
    while True:
        j, a, b = own_shard(sync, SYNC_COUNTERS + HEAD * T, bounds, tid, T, True)
        if j < 0:
            break
        r = rows[j]
        loss[j, 0] = bn_head_into(
            z3[a:b], stats3[0], stats3[2], g3, be3, w4, b4, labels[a:b], weights[a:b], scale, backward,
            xhat3[a:b], y3[a:b], a3[a:b], z4[a:b], probs[a:b], dz4[a:b],
            r[offs[6]:offs[6] + C * 65].reshape(C, 65), r[offs[7]:offs[7] + C], da3[a:b], dy3[a:b], bwd3[j])
        if backward:
            tree_rows_done(sync, tb + 3 * ts, bwd3, j, top)
    if not backward:
        return
    if _meet(sync, T, clock, tid, np.int64(6)):
        return
    _backward_sums(sync, SYNC_COUNTERS + T3 * T, tid, T, bwd3, step, sums3, stats3, g3, M3, coef2, False,
                   _bn_grad(gflat, bn_offs, 3, g3.shape[0]), _bn_grad(gflat, bn_offs, 3, g3.shape[0], 1))
    if _meet(sync, T, clock, tid, np.int64(7)):
        return
    # backward from BN3: fc1's gradients, pool2 + ELU, to BN2's sums
    U = g3.shape[0]
    while True:
        j, a, b = own_shard(sync, SYNC_COUNTERS + B3 * T, bounds, tid, T, False)
        if j < 0:
            break
        bn_unit_backward_given_into(dy3[a:b], xhat3[a:b], g3, stats3[2], sums3[:U], sums3[U:], M3, dz3[a:b])
        fc_dx_loop_into(dz3[a:b], w3, dflat[a:b])
        bnpool.bn_unpool_sums_into(dflat[a:b].reshape(b - a, 16, 8, 8), p2[a:b], np.int64(0), arg2[a:b],
                                   z2[a:b], coef2, bwd2[j])
        tree_rows_done(sync, tb + 4 * ts, bwd2, j, top)
    if _meet(sync, T, clock, tid, np.int64(8)):
        return
    _backward_sums(sync, SYNC_COUNTERS + T2 * T, tid, T, bwd2, step, sums2, stats2, g2, M2, coef2, True,
                   _bn_grad(gflat, bn_offs, 2, g2.shape[0]), _bn_grad(gflat, bn_offs, 2, g2.shape[0], 1))
    if _meet(sync, T, clock, tid, np.int64(9)):
        return
    # backward from BN2: conv2's gradients, to BN1's sums
    while True:
        j, a, b = own_shard(sync, SYNC_COUNTERS + B2 * T, bounds, tid, T, True)
        if j < 0:
            break
        r, o, e = rows[j], tid * sm, tid * sm + b - a
        segments.bn2_conv2_back_into(
            dflat[a:b].reshape(b - a, 16, 8, 8), p2[a:b], arg2[a:b], z2[a:b], coef2, dz2[o:e], xp2[a:b],
            dzt2[o:e], dwt2s[tid], r[offs[2]:offs[2] + 2400].reshape(16, 6, 5, 5), r[offs[3]:offs[3] + 16],
            w2, dzp2[o:e], dp1[a:b], arg1[a:b], z1[a:b], coef1, bwd1[j], unit)
        tree_rows_done(sync, tb + 5 * ts, bwd1, j, top)
    while True:                                                 # fc1's gradient, summed as it is made
        i = take(sync, FC1)
        if i >= fc_grads_tree_tasks(U, 1024):
            break
        fc_grads_tree_task(dz3, p2.reshape(p2.shape[0], 1024), bounds, gflat[offs[4]:offs[4] + U * 1024].reshape(U, 1024),
                           gflat[offs[5]:offs[5] + U], i, stk[tid], lev[tid])
    tree_chunks(sync, TREE_FC, rows, gflat, chunks_fc)         # fc2's rows are final
    if _meet(sync, T, clock, tid, np.int64(10)):
        return
    _backward_sums(sync, SYNC_COUNTERS + T1 * T, tid, T, bwd1, step, sums1, stats1, g1, M1, coef1, True,
                   _bn_grad(gflat, bn_offs, 1, g1.shape[0]), _bn_grad(gflat, bn_offs, 1, g1.shape[0], 1))
    if _meet(sync, T, clock, tid, np.int64(11)):
        return
    # backward from BN1: conv1's gradients
    while True:
        j, a, b = own_shard(sync, SYNC_COUNTERS + B1 * T, bounds, tid, T, False)
        if j < 0:
            break
        r, o, e = rows[j], tid * sm, tid * sm + b - a
        segments.bn1_conv1_back_into(dp1[a:b], xp2[a:b], arg1[a:b], z1[a:b], coef1, dz1[o:e], xp1[a:b],
                                     r[offs[0]:offs[0] + 150].reshape(6, 1, 5, 5), r[offs[1]:offs[1] + 6], unit)
    tree_chunks(sync, TREE_C2, rows, gflat, chunks_conv2)      # conv2's rows are final
    if _meet(sync, T, clock, tid, np.int64(12)):
        return
    tree_chunks(sync, TREE, rows, gflat, chunks_conv1)         # and conv1's
    if tid < clock.shape[0]:
        clock[tid, 0, 13] = cycles()
