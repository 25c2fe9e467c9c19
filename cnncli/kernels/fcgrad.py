"""The fully connected layer's weight and bias gradients in numba loops: one shard's (fc_grads_into,
also fc2's in the head) and fc1's for a whole batch, summed through the shards' tree as it is made
(fc_grads_tree_task). Not the forward or the input gradient (fc.py).
"""

# dw = dz.T @ x and db = the column sums of dz, each element summed over the images in order: the
# first product rounded, then one fma per image (_grad_tile, AVX-512's or AVX2's register tile by
# simd.WIDE, the same bits). Shape legend as fc.py's: N rows (images), I inputs, O outputs; w (O,I)
# as PyTorch's Linear; B images of a batch, L shards.

from __future__ import annotations

import numpy as np
from numba import njit

from .reduce import LEVELS, tree_fold, tree_push
from .simd import WIDE, sfma, vfma, vload, vmul, vsplat, vstore


@njit(inline="always")
def _grad_tile_wide(dz, x, o, p, n0, n1, i):
    # outputs o and p x columns i .. i+63 of sum over n0 <= n < n1 of dz[n, .] * x[n, :]: the first
    # product rounded, then one fma per image in order; eight 16-lane chains sharing the x loads
    I = x.shape[1]
    u, v = vsplat(dz[n0, o]), vsplat(dz[n0, p])
    r = n0 * I + i
    x0, x1, x2, x3 = vload(x, r), vload(x, r + 16), vload(x, r + 32), vload(x, r + 48)
    a0, a1, a2, a3 = vmul(u, x0), vmul(u, x1), vmul(u, x2), vmul(u, x3)
    b0, b1, b2, b3 = vmul(v, x0), vmul(v, x1), vmul(v, x2), vmul(v, x3)
    for n in range(n0 + 1, n1):
        u, v = vsplat(dz[n, o]), vsplat(dz[n, p])
        r = n * I + i
        x0, x1, x2, x3 = vload(x, r), vload(x, r + 16), vload(x, r + 32), vload(x, r + 48)
        a0, a1, a2, a3 = vfma(u, x0, a0), vfma(u, x1, a1), vfma(u, x2, a2), vfma(u, x3, a3)
        b0, b1, b2, b3 = vfma(v, x0, b0), vfma(v, x1, b1), vfma(v, x2, b2), vfma(v, x3, b3)
    return a0, a1, a2, a3, b0, b1, b2, b3


@njit(inline="always")
def _grad_half(dz, x, o, p, n0, n1, i):
    # _grad_tile_wide's sums for columns i .. i+31 only: four 16-lane chains
    I = x.shape[1]
    u, v = vsplat(dz[n0, o]), vsplat(dz[n0, p])
    r = n0 * I + i
    x0, x1 = vload(x, r), vload(x, r + 16)
    a0, a1, b0, b1 = vmul(u, x0), vmul(u, x1), vmul(v, x0), vmul(v, x1)
    for n in range(n0 + 1, n1):
        u, v = vsplat(dz[n, o]), vsplat(dz[n, p])
        r = n * I + i
        x0, x1 = vload(x, r), vload(x, r + 16)
        a0, a1, b0, b1 = vfma(u, x0, a0), vfma(u, x1, a1), vfma(v, x0, b0), vfma(v, x1, b1)
    return a0, a1, b0, b1


@njit(inline="always")
def _grad_tile_narrow(dz, x, o, p, n0, n1, i):
    # _grad_tile_wide in two passes of 32 columns (its 14 vectors spill on AVX2): the same sums
    a0, a1, b0, b1 = _grad_half(dz, x, o, p, n0, n1, i)
    a2, a3, b2, b3 = _grad_half(dz, x, o, p, n0, n1, i + 32)
    return a0, a1, a2, a3, b0, b1, b2, b3


_grad_tile = _grad_tile_wide if WIDE else _grad_tile_narrow   # (simd.WIDE: see conv16.py)


@njit(cache=True, nogil=True)
def fc_grads_into(dz, x, dw, db):
    # dz (N,O), x (N,I) C-contiguous   ->   dw (O,I) = sum over n of dz[n,o] * x[n,:], db (O,) = sum
    # over n of dz[n,o]: each summed over n in order, dw's first product rounded and the others
    # added by fma (_grad_tile); two outputs x 64 columns at a time (an odd O's last output
    # twice, the same sums), the last I % 64 columns scalar with the same operations
    N, O = dz.shape
    I = x.shape[1]
    if N == 0:
        dw[:, :] = 0.0
        db[:] = 0.0
        return
    I64 = I - I % 64
    for o in range(O):
        s = dz[0, o]
        for n in range(1, N):
            s += dz[n, o]
        db[o] = s
    for o in range(0, O, 2):
        p = min(o + 1, O - 1)
        for i in range(0, I64, 64):
            a0, a1, a2, a3, b0, b1, b2, b3 = _grad_tile(dz, x, o, p, 0, N, i)
            for k, t in enumerate((a0, a1, a2, a3)):
                vstore(dw, o * I + i + 16 * k, t)
            for k, t in enumerate((b0, b1, b2, b3)):
                vstore(dw, p * I + i + 16 * k, t)
    for o in range(O):
        for i in range(I64, I):
            t = dz[0, o] * x[0, i]
            for n in range(1, N):
                t = sfma(dz[n, o], x[n, i], t)
            dw[o, i] = t


# fc1's weight and bias gradients of a whole batch, summed over its shards through
# distributed.tree_sum's tree as they are made: each shard's partial sum is fc_grads_into's (the
# same _grad_tile), pushed onto a stack of finished left subtrees per output pair (reduce.py's
# tree_push / tree_fold: tree_sum's nodes and operands). The same bits as
# fc_grads_into per shard followed by tree_sum, without writing the (L, O*I) rows in between.
# A task is 64 columns times up to PAIRS output pairs (o, o+1; an odd O's last output twice),
# shard by shard: a shard's 64 columns of x stay in L1 while every pair of the task uses them
# (pair by pair over all shards instead read x from L2 for each pair: 2.7x slower).

PAIRS = 11                     # output pairs per task: fc1's 65 outputs in 3 tasks per column block


@njit(inline="always")
def _bias_tree(dz, bounds, o, p, stk, lev, db):
    # db[o], db[p] = tree_sum over the shards of each shard's sum of dz[:, o] (and p) in order,
    # on the scalar stack stk[:, 0:2]
    top = 0
    for j in range(bounds.shape[0] - 1):
        a, b = bounds[j], bounds[j + 1]
        s, t = dz[a, o], dz[a, p]
        for n in range(a + 1, b):
            s += dz[n, o]
            t += dz[n, p]
        c, h = top, 0
        while c > 0 and lev[c - 1] == h:
            s, t = stk[c - 1, 0] + s, stk[c - 1, 1] + t
            c -= 1
            h += 1
        stk[c, 0], stk[c, 1], lev[c] = s, t, h
        top = c + 1
    s, t = stk[top - 1, 0], stk[top - 1, 1]
    for c in range(top - 2, -1, -1):
        s, t = stk[c, 0] + s, stk[c, 1] + t
    db[o], db[p] = s, t


@njit(cache=True)
def fc_grads_tree_tasks(O, I):
    # the number of fc_grads_tree_task tasks for O outputs and I inputs (I a multiple of 64)
    return -(-((O + 1) // 2) // PAIRS) * (I // 64)


@njit(cache=True, nogil=True)
def fc_grads_tree_task(dz, x, bounds, dw, db, task, stk, lev):
    # dz (B,O), x (B,I) C-contiguous with I a multiple of 64, bounds (L+1,) int64 the shards' first
    # rows, task < fc_grads_tree_tasks(O, I), stk (PAIRS*LEVELS,128) and lev (PAIRS*LEVELS,) int64
    # scratch   ->   dw[o0:o1, i:i+64] (and db[o0:o1] for the first column block) = tree_sum over
    #   the shards of fc_grads_into(dz[a:b], x[a:b])'s values there
    O = dz.shape[1]
    I = x.shape[1]
    L = bounds.shape[0] - 1
    K = I // 64
    q0 = (task // K) * PAIRS
    nq = min(PAIRS, (O + 1) // 2 - q0)                # the task's pairs q0 .. q0 + nq - 1
    i = (task % K) * 64
    tops = np.zeros(PAIRS, np.int64)
    for j in range(L):
        for g in range(nq):
            o = 2 * (q0 + g)
            p = min(o + 1, O - 1)
            a0, a1, a2, a3, b0, b1, b2, b3 = _grad_tile(dz, x, o, p, bounds[j], bounds[j + 1], i)
            tops[g] = tree_push(stk, lev, g * LEVELS, tops[g], a0, a1, a2, a3, b0, b1, b2, b3)
    for g in range(nq):
        o = 2 * (q0 + g)
        p = min(o + 1, O - 1)
        tree_fold(stk, g * LEVELS, tops[g], dw, o * I + i, p * I + i)
        if i == 0:
            _bias_tree(dz, bounds, o, p, stk, lev, db)
