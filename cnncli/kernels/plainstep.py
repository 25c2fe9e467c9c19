"""A whole training step without BN in one nogil numba call per thread (one process): the layer
kernels passes.shard_step_plain calls from Python, in the same order, on per-thread scratch, with
the same fixed trees, so the same bits. Not the checks (shards.Plan built the arrays), not BN
(bnstep.py).
"""

# A whole training step without BN in one nogil numba call per thread (one process): each thread
# takes the next micro-shard from an atomic counter, makes its input when the trainer's lookup and
# augmentation are passed in (augment_draw.make_input_into), and runs its forward and backward -- the
# layer kernels passes.shard_step_plain calls one by one from Python, in the same order -- on a scratch
# workspace of its own, writing the shard's probabilities, loss and gradient row (all but fc1's:
# fc1's input and output gradient stay in batch-wide arrays); after a barrier the threads make
# fc1's weight gradient already summed through the tree (fcgrad.fc_grads_tree_task: 95% of the
# parameters, never written as rows) and sum the other columns of the rows through the same fixed
# tree in column chunks (reduce.tree_chunks). A step
# takes the GIL once per thread instead of ~20 times per shard, and the bits are those of the
# per-shard path (MPI ranks, and the first run while a worker still compiles this kernel).
#
# Shapes: B images (this process's batch), L shards (bounds (L+1,) their first images), C classes,
# P parameters, T threads; the scratch arrays are passes.Workspace's with n = T * m (thread t uses
# rows t*m : t*m + m, m >= the largest shard) but p2 (B,16,8,8) and dz3 (B,65), the batch's;
# dwt2s (T,6,5,5,16); stk (T,fcgrad.PAIRS*fcgrad.LEVELS,128), lev (T,fcgrad.PAIRS*fcgrad.LEVELS) int64
# fc1's tree stacks.

from __future__ import annotations

import numpy as np
from numba import njit

from . import sync as _sync
from .activation import elu_backward_into, elu_forward_into
from .augment_draw import MADE, make_input_into
from .conv16 import conv16_backward_dw_into, conv16_backward_dx_into, conv16_forward_into, conv16_grads_finish_into
from .conv32 import conv32_backward_dw_into, conv32_forward_into, pad2_into
from .fc import fc_dx_loop_into, fc_forward_loop_into, fc_narrow_dx_into, fc_narrow_forward_into
from .fcgrad import fc_grads_into, fc_grads_tree_task, fc_grads_tree_tasks
from .loss import sigmoid_bce_into
from .pool import pool_elu_backward_into, pool_elu_forward_into
from .reduce import tree_chunks
from .sync import barrier, next_shard, take

SHARDS, TREE, TID, FC1 = range(4)   # the counters of the job's sync array
SYNC_SIZE = _sync.COUNTERS + 4


@njit(cache=True, nogil=True)
def plain_step_into(sync, T, src, bounds, backward, x, labels, weights, scale,
                    images, idx, table, fills, key, augs, pool, m,
                    w1, b1, w2, b2, w3, b3, w4, b4,
                    xp1, z1, xp2, arg1, z2, p2, arg2, z3, a3, z4, dz4, da3, dz3, dflat, dz2, dp1, dz1,
                    dzp2, dzt2, dwt2s, stk, lev, probs, rows, offs, loss, chunks, gflat):
    # sync (SYNC_SIZE,) int64 zeroed, T threads each calling this once; bounds (L+1,) int64;
    # x (B,1,32,32) the input, labels (B,) int64, weights (B,) float64, scale = 1/B; src how x is
    # made (augment_draw's kinds: GIVEN; MADE by each thread before this call, so the threads
    # first wait for one another; LOOKUP or AUGMENT: each shard's rows of x made in its task by
    # make_input_into from images (M,32,32) uint8, idx (B,) int64, table (256,), fills (M,) or (0,)
    # float64, key uint64, augs (16,) float64 and pool (NL,) float32); m scratch rows per thread; the
    # parameters' views; the scratch workspace (n = T*m) and dwt2s (T,6,5,5,16); probs (B,C);
    # rows (L,P) the shards' gradients, offs (8,) int64 where conv1.w, conv1.b, conv2.w, conv2.b,
    # fc1.w, fc1.b, fc2.w, fc2.b start in a row; chunks (K,2) int64 column ranges of the rows' tree
    # (all but fc1's)   ->   probs, loss (L,1) float64 each shard's sum of weight * loss; with
    #   backward: rows (but fc1's columns), and gflat (P,) the tree of every shard's gradient
    C, U = w4.shape
    if src == MADE and barrier(sync, T):
        return
    tid = take(sync, TID)
    while True:
        j, a, b = next_shard(sync, SHARDS, bounds)
        if j < 0:
            break
        o, e, n = tid * m, tid * m + (b - a), b - a
        r = rows[j]
        # forward: the input, conv1 -> pool + ELU -> conv2 -> pool + ELU -> fc1 -> the head (passes.shard_step_plain)
        make_input_into(src, images, idx[a:b], table, fills, a, key, augs, pool, x[a:b])
        pad2_into(x[a:b], xp1[o:e])
        conv32_forward_into(xp1[o:e], w1, z1[o:e])
        # (offsets as np.int64, as in segments.py: one compile of each pool kernel, not one per value)
        pool_elu_forward_into(z1[o:e], b1, xp2[o:e], np.int64(2), arg1[o:e])
        conv16_forward_into(xp2[o:e], w2, z2[o:e])
        pool_elu_forward_into(z2[o:e], b2, p2[a:b], np.int64(0), arg2[o:e])
        flat = p2[a:b].reshape(n, 1024)
        fc_forward_loop_into(flat, w3, b3, z3[o:e])
        elu_forward_into(z3[o:e].reshape(n * U), a3[o:e].reshape(n * U))
        fc_narrow_forward_into(a3[o:e], w4, b4, z4[o:e])
        loss[j, 0] = sigmoid_bce_into(z4[o:e], labels[a:b], weights[a:b], scale, probs[a:b], dz4[o:e])
        if not backward:
            continue
        # backward: the forward reversed
        fc_grads_into(dz4[o:e], a3[o:e], r[offs[6]:offs[6] + C * U].reshape(C, U), r[offs[7]:offs[7] + C])
        fc_narrow_dx_into(dz4[o:e], w4, da3[o:e])
        elu_backward_into(da3[o:e].reshape(n * U), a3[o:e].reshape(n * U), dz3[a:b].reshape(n * U))
        fc_dx_loop_into(dz3[a:b], w3, dflat[o:e])
        pool_elu_backward_into(dflat[o:e].reshape(n, 16, 8, 8), p2[a:b], np.int64(0), arg2[o:e], dz2[o:e])
        conv16_backward_dw_into(dz2[o:e], xp2[o:e], dzt2[o:e], dwt2s[tid])
        conv16_grads_finish_into(dwt2s[tid], dzt2[o:e], r[offs[2]:offs[2] + 2400].reshape(16, 6, 5, 5),
                                 r[offs[3]:offs[3] + 16])
        conv16_backward_dx_into(dz2[o:e], w2, dzp2[o:e], dp1[o:e])
        pool_elu_backward_into(dp1[o:e], xp2[o:e], np.int64(2), arg1[o:e], dz1[o:e])
        conv32_backward_dw_into(dz1[o:e], xp1[o:e], r[offs[0]:offs[0] + 150].reshape(6, 1, 5, 5),
                                r[offs[1]:offs[1] + 6])
    if not backward or barrier(sync, T):
        return
    B = p2.shape[0]
    fc1w = gflat[offs[4]:offs[4] + U * 1024].reshape(U, 1024)
    while True:
        i = take(sync, FC1)
        if i >= fc_grads_tree_tasks(U, 1024):
            break
        fc_grads_tree_task(dz3, p2.reshape(B, 1024), bounds, fc1w, gflat[offs[5]:offs[5] + U], i, stk[tid], lev[tid])
    tree_chunks(sync, TREE, rows, gflat, chunks)
