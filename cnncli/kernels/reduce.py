"""distributed.tree_sum's fixed pairwise tree as a numba kernel over column blocks, the blocks spread
over the worker threads (threads.run): every column goes through the same tree whoever sums it, so
the bits are tree_sum's for any thread count. Not the tree's definition (distributed.tree_sum is
the reference, tests/test_reduce.py checks bitwise) nor the cross-rank gather (distributed.Comm).

Shape legend: S rows (per-shard partial sums), M columns.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .sync import take
from .threads import run

BLOCK = 512           # columns summed through the whole tree at once: (S/2, BLOCK) stays in L1/L2
TASK = 16 * BLOCK     # columns per worker task (threads.run hands them out)


@njit(cache=True, nogil=True)
def tree_cols_into(parts, out, c0, c1):
    # parts (S,M), out (M,): out[c0:c1] = tree_sum(parts)[c0:c1] -- level by level row 2i + row 2i+1,
    # an odd last row carried up unchanged, each block of BLOCK columns through every level at once
    S = parts.shape[0]
    work = np.empty(((S + 1) // 2, BLOCK), parts.dtype)               # (ceil(S/2), BLOCK)
    for b0 in range(c0, c1, BLOCK):
        w = min(BLOCK, c1 - b0)
        if S == 1:
            for c in range(w):
                out[b0 + c] = parts[0, b0 + c]
            continue
        half = S // 2
        for i in range(half):
            a, b, r = parts[2 * i, b0:b0 + w], parts[2 * i + 1, b0:b0 + w], work[i]
            for c in range(w):
                r[c] = a[c] + b[c]
        if S % 2:
            for c in range(w):
                work[half, c] = parts[S - 1, b0 + c]
        n = (S + 1) // 2
        while n > 1:
            half = n // 2
            for i in range(half):
                a, b, r = work[2 * i], work[2 * i + 1], work[i]
                for c in range(w):
                    r[c] = a[c] + b[c]
            if n % 2:
                for c in range(w):
                    work[half, c] = work[n - 1, c]
            n = half + n % 2
        for c in range(w):
            out[b0 + c] = work[0, c]


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
