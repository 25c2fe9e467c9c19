"""distributed.tree_sum's fixed pairwise tree as numba kernels: over column blocks on the worker
threads, or made as its rows finish. Not the tree's definition (distributed.tree_sum is the
reference) nor the cross-rank gather (distributed.Comm).
"""

# distributed.tree_sum's fixed pairwise tree as a numba kernel over column blocks, the blocks spread
# over the worker threads (threads.run), and the same tree made as its rows finish, by the threads
# that write them (tree_climb, inside a numba job; RowTree from Python): every column goes through
# the same tree whoever sums it, so the bits are tree_sum's for any thread count (tests/test_reduce.py
# checks them bitwise against distributed.tree_sum).
#
# Shape legend: S rows (per-shard partial sums), M columns.

from __future__ import annotations

import numpy as np
from numba import njit

from .simd import vadd, vload, vstore
from .sync import atomic_add, take
from .threads import run

TASK = 8192           # columns per worker task (threads.run hands them out)


# The tree on a stack of finished left subtrees: rows pushed in order, a new node adds the one below
# it while both have the same height (left + right), and at the end the stack adds up right to
# left. That is tree_sum's left-aligned pairing with an odd node carried up, so the same nodes,
# operands and bits as summing level by level, with each row read once and every partial sum in L1
# (tree_cols_into; fcgrad.fc_grads_tree_task pushes each shard's gradient as it makes it).

LEVELS = 40                    # stack depth: up to 2^39 rows


@njit(inline="always")
def tree_push(stk, lev, base, top, v0, v1, v2, v3, v4, v5, v6, v7):
    # stk (., 128) rows base .. base + top - 1 hold finished subtrees, lev (.,) their heights; a new
    # leaf (v0..v7: 128 values)   ->   the new count, the leaf merged into the stack (left + right)
    c, h = top, 0
    while c > 0 and lev[base + c - 1] == h:
        q = (base + c - 1) * 128
        v0, v1, v2, v3 = vadd(vload(stk, q), v0), vadd(vload(stk, q + 16), v1), \
            vadd(vload(stk, q + 32), v2), vadd(vload(stk, q + 48), v3)
        v4, v5, v6, v7 = vadd(vload(stk, q + 64), v4), vadd(vload(stk, q + 80), v5), \
            vadd(vload(stk, q + 96), v6), vadd(vload(stk, q + 112), v7)
        c -= 1
        h += 1
    q = (base + c) * 128
    for k, v in enumerate((v0, v1, v2, v3, v4, v5, v6, v7)):
        vstore(stk, q + 16 * k, v)
    lev[base + c] = h
    return c + 1


@njit(inline="always")
def tree_fold(stk, base, top, out, r0, r1):
    # the stack's subtrees (rows base ..) added right to left (left + right); the root's first 64
    # values into out from flat offset r0, the other 64 from r1
    q = (base + top - 1) * 128
    v0, v1, v2, v3 = vload(stk, q), vload(stk, q + 16), vload(stk, q + 32), vload(stk, q + 48)
    v4, v5, v6, v7 = vload(stk, q + 64), vload(stk, q + 80), vload(stk, q + 96), vload(stk, q + 112)
    for c in range(top - 2, -1, -1):
        q = (base + c) * 128
        v0, v1, v2, v3 = vadd(vload(stk, q), v0), vadd(vload(stk, q + 16), v1), \
            vadd(vload(stk, q + 32), v2), vadd(vload(stk, q + 48), v3)
        v4, v5, v6, v7 = vadd(vload(stk, q + 64), v4), vadd(vload(stk, q + 80), v5), \
            vadd(vload(stk, q + 96), v6), vadd(vload(stk, q + 112), v7)
    for k, v in enumerate((v0, v1, v2, v3)):
        vstore(out, r0 + 16 * k, v)
    for k, v in enumerate((v4, v5, v6, v7)):
        vstore(out, r1 + 16 * k, v)


@njit(cache=True, nogil=True)
def tree_cols_into(parts, out, c0, c1):
    # parts (S,M) C-contiguous, out (M,): out[c0:c1] = tree_sum(parts)[c0:c1] (tree_cols_step)
    tree_cols_step(parts, 1, out, c0, c1)


@njit(inline="always")
def tree_cols_step(parts, step, out, c0, c1):
    # parts (S,M) C-contiguous, out (M,): out[c0:c1] = tree_sum of rows 0, step, 2*step, .. of parts
    # [c0:c1] -- 128 columns at a time, row by row onto the stack (tree_push), then column by column
    # on a scalar stack for the last (c1 - c0) % 128: the same additions, in the same order, for
    # every column. With step = 2^k those rows are the nodes of level k of the tree over all S rows
    # (tree_climb with top = k), so this finishes that tree.
    S, M = parts.shape
    S = -(-S // step)                                                  # the rows summed
    if S <= 2:                          # one row or one addition (a thread or two's top nodes): no stack
        o, a = out[c0:c1], parts[0, c0:c1]                             # (views from 0: loops LLVM vectorizes)
        if S == 1:
            for c in range(c1 - c0):
                o[c] = a[c]
        else:
            b = parts[step, c0:c1]
            for c in range(c1 - c0):
                o[c] = a[c] + b[c]
        return
    stk = np.empty((LEVELS, 128), parts.dtype)                         # (LEVELS,128) the stack
    lev = np.empty(LEVELS, np.int64)                                   # (LEVELS,) its heights
    V = c1 - (c1 - c0) % 128
    for b0 in range(c0, V, 128):
        top = 0
        for j in range(S):
            q = j * step * M + b0
            top = tree_push(stk, lev, 0, top, vload(parts, q), vload(parts, q + 16), vload(parts, q + 32),
                            vload(parts, q + 48), vload(parts, q + 64), vload(parts, q + 80),
                            vload(parts, q + 96), vload(parts, q + 112))
        tree_fold(stk, 0, top, out, b0, b0 + 64)
    for c in range(V, c1):
        top = 0
        for j in range(S):
            v, h = parts[j * step, c], 0
            while top > 0 and lev[top - 1] == h:
                v = stk[top - 1, 0] + v
                top -= 1
                h += 1
            stk[top, 0] = v
            lev[top] = h
            top += 1
        v = stk[top - 1, 0]
        for k in range(top - 2, -1, -1):
            v = stk[k, 0] + v
        out[c] = v


# The same tree made while the rows are being written (inside a job of threads, kernels/sync.py):
# a thread that finishes row j climbs from it, and at each node whose other child is not done yet
# (the node's counter in sync goes 0 -> 1) it stops; the thread that completes the second child
# (1 -> 2) merges the two into the left child's row and climbs on. A node without a right child
# (the odd last one of a level) is its left child unchanged. Node i of level k lives in row
# i * 2^k (its first leaf), so the root ends in row 0: tree_sum's nodes and operands, merged by the
# threads that wrote their rows (still in their caches), with no pass over all the rows after the
# last one. The counters: sync[base .. base + tree_slots(L)) (zeroed), one per node above the rows.
# A climb may stop at level `top` (tree_top): the nodes of that level, rows 0, 2^top, 2*2^top, ..,
# are then complete, and tree_cols_step / bntree.bn_moments_tree_range with step 2^top make the
# rest of the tree column by column (all threads at once, instead of one thread merging the root).

def tree_slots(L: int) -> int:
    """The counters tree_climb needs for L rows: one per node above them, at most L + LEVELS (a
    numba caller writes L + LEVELS; this is Python's, kept out of the kernel dispatchers that
    precompile's dry run stubs out)."""
    return L + LEVELS


@njit(inline="always")
def tree_top(L, T):
    # the level where the climbs of T threads over L rows stop: nodes of about L / T rows (a thread's
    # share in sync.own_shard), so each thread climbs in its own rows and the few nodes left (T to
    # 2T) meet column by column in the phase after
    top, size = 0, 2
    while size <= L // max(T, 1):
        top, size = top + 1, size * 2
    return top


@njit(inline="always")
def tree_climb(sync, base, L, k, i, top):
    # node i of level k (level 0: the L rows) is complete   ->   (k + 1, p, a, b, hi): the merge
    # this thread must now make, rows a (leaves a .. b-1) and b (leaves b .. hi-1) into row a, node p
    # of level k + 1; or k = -1 when the sibling is not done yet, or level `top` or the root is reached
    n, off = L, base
    for _ in range(k):
        n = (n + 1) // 2
        off += n
    while n > 1 and k < top:
        p = i // 2
        if i % 2 == 0 and i == n - 1:           # no right sibling: carried up unchanged
            k, i, n = k + 1, p, (n + 1) // 2
            off += n
            continue
        if atomic_add(sync, off + p, 1) == 0:   # the other child is not done: its thread merges
            return -1, 0, 0, 0, 0
        size = 1 << k
        a, b = 2 * p * size, (2 * p + 1) * size
        return k + 1, p, a, b, min(b + size, L)
    return -1, 0, 0, 0, 0


@njit(inline="always")
def tree_rows_done(sync, base, parts, j, top):
    # row j of parts (L,M) is written: the additions of the row tree it completes up to level top
    # (right into left row, in place; node i of level top ends in row i * 2^top, the root in row 0)
    L, M = parts.shape
    V = M - M % 16
    k, i = 0, j
    while True:
        k, i, a, b, hi = tree_climb(sync, base, L, k, i, top)
        if k < 0:
            return
        for c in range(0, V, 16):
            vstore(parts, a * M + c, vadd(vload(parts, a * M + c), vload(parts, b * M + c)))
        for c in range(V, M):
            parts[a, c] = parts[a, c] + parts[b, c]


@njit(inline="always")
def tree_chunks(sync, k, parts, out, chunks):
    # inside a job of threads (kernels/sync.py): the column ranges chunks (K,2) int64 of parts'
    # tree, each to whichever thread takes it next from counter k -- tree_cols_into, the bits of
    # tree_sum whenever and wherever it runs
    for _ in range(chunks.shape[0]):
        i = take(sync, k)
        if i >= chunks.shape[0]:
            break
        tree_cols_into(parts, out, chunks[i, 0], chunks[i, 1])


def column_tasks(segments):
    """[(c0, c1)]: the column ranges `segments` cut into tasks of at most TASK columns."""
    return [(a, min(a + TASK, c1)) for c0, c1 in segments for a in range(c0, c1, TASK)]


def tree_sum_into(parts, out, segments=None):
    """out[c0:c1] = distributed.tree_sum(parts)[c0:c1] for each (c0, c1) of segments (default: all
    M columns); other columns of out untouched. parts (S,M) C-contiguous, out (M,) of its dtype.
    Large sums run in column tasks on the worker threads; returns out."""
    if parts.ndim != 2 or parts.shape[0] < 1 or not parts.flags.c_contiguous:
        raise ValueError(f"parts must be a C-contiguous (S, M) array with S >= 1, got {parts.shape}")
    if out.shape != parts.shape[1:] or out.dtype != parts.dtype:
        raise ValueError(f"out must be ({parts.shape[1]},) {parts.dtype}, got {out.shape} {out.dtype}")
    if segments is None:
        segments = ((0, parts.shape[1]),)
    tasks = column_tasks(segments)
    if len(tasks) == 1 or parts.shape[0] == 1:
        for c0, c1 in tasks:
            tree_cols_into(parts, out, c0, c1)
    else:
        run(lambda j: tree_cols_into(parts, out, *tasks[j]), len(tasks))
    return out


class RowTree:
    """tree_sum of the rows of parts (S,M) computed while they are being written: each worker that
    finishes row j (done(j)) adds every tree node whose two children are now complete, left + right
    into the left child's row, so the root ends in row 0 -- the same nodes, operands and bits as
    tree_sum, no extra pass or thread hand-off after the last row, and the rows are overwritten.
    Only the columns of `segments` are summed."""

    def __init__(self, parts, segments=None):
        import threading

        self.parts, self.lock = parts, threading.Lock()
        self.segments = list(segments) if segments is not None else [(0, parts.shape[1])]
        self.sizes = [parts.shape[0]]                 # nodes per level: S, ceil(S/2), ..., 1
        while self.sizes[-1] > 1:
            self.sizes.append((self.sizes[-1] + 1) // 2)
        self.reset()

    def reset(self):
        """Before the rows of a new step are written."""
        self.seen = [[0] * n for n in self.sizes]

    def done(self, j):
        """Row j holds its leaf: add the nodes it completes (any thread; each node once)."""
        level, i = 0, j
        while level + 1 < len(self.sizes):
            parent, need = i // 2, 2 if (i // 2) * 2 + 1 < self.sizes[level] else 1
            with self.lock:
                self.seen[level + 1][parent] += 1
                if self.seen[level + 1][parent] < need:
                    return
            if need == 2:                             # rows of the leftmost leaves of the two children
                left, right = self.parts[(2 * parent) << level], self.parts[(2 * parent + 1) << level]
                for c0, c1 in self.segments:
                    np.add(left[c0:c1], right[c0:c1], out=left[c0:c1])
            level, i = level + 1, parent

    def result(self):
        """Row 0: the root (valid once done(j) has run for every row)."""
        return self.parts[0]
