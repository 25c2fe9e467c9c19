"""The shards' BN moments summed into the batch's through tree_sum's pairwise tree (sums added, M2s
combined by Chan's rule), all at once or as the rows finish. Not a shard's own moments nor the
statistics (bnstats.py), not the cross-rank gather (distributed.Comm).
"""

# The shards' BN moments summed into the batch's: their [sum | M2] rows meet in tree_sum's pairwise
# tree (reduce.py), the sums added and the M2s combined by Chan, Golub and LeVeque's rule, either
# all at once (bn_moments_tree_into, column by column) or as the rows finish inside a job of threads
# (bn_moments_rows_done). Not a shard's own moments nor the statistics made from the batch's
# (bnstats.py), not the cross-rank gather (distributed.Comm).
#
# Shape legend: S shards (rows) in the tree, D statistics (a row is [sum | M2], 2D float64).
# Chan's rule for two nodes a and b:
#   M2 = M2a + M2b + (mean_b - mean_a)^2 * n_a n_b / (n_a + n_b),   mean = sum / n
# (the sums add exactly as tree_sum adds them, so the mean is tree_sum's bits).

from __future__ import annotations

import numpy as np
from numba import njit

from .bnstats import power_of_two
from .checks import check_array
from .reduce import LEVELS, tree_climb, tree_rows_done
from .simd import vadd, vdiv, vload, vmul, vsplat, vstore, vsub
from .sync import take


@njit(inline="always")
def _chan(sa, ma, sb, mb, coef, k):
    # two nodes' [sum | M2] vectors   ->   their parent's: sums added, M2s combined (Chan et al.)
    # with merge k's coefficients (_chan_coefs), the operations of _chan_scalar lane by lane
    f, ia, ib, na, nb = coef[k, 0], coef[k, 1], coef[k, 2], coef[k, 3], coef[k, 4]
    if ia > 0.0:                                      # x / 2^k = x * 2^-k exactly: 16 divisions fewer
        delta = vsub(vmul(sb, vsplat(ib)), vmul(sa, vsplat(ia)))
    else:
        delta = vsub(vdiv(sb, vsplat(nb)), vdiv(sa, vsplat(na)))
    return vadd(sa, sb), vadd(vadd(ma, mb), vmul(vmul(delta, delta), vsplat(f)))


@njit(inline="always")
def _chan_scalar(sa, ma, sb, mb, coef, k):
    # one statistic of _chan
    f, na, nb = coef[k, 0], coef[k, 3], coef[k, 4]
    delta = sb / nb - sa / na
    return sa + sb, ma + mb + delta * delta * f


@njit(inline="always")
def _chan_coefs(counts, coef, lev, sc):
    # the tree's merges in the stack's order (bn_moments_tree_range) for shards of counts (S,)
    # values   ->   coef (S-1, 5) rows (f = na nb / (na + nb), 1/na and 1/nb when both are powers of
    # two (else 0), na, nb), the same for every statistic
    top, k = 0, 0
    for j in range(counts.shape[0]):
        nb, h = counts[j], 0
        while top > 0 and lev[top - 1] == h:
            top -= 1
            nb, h, k = _chan_coef(sc[top], nb, coef, k), h + 1, k + 1
        sc[top], lev[top] = nb, h
        top += 1
    top -= 1
    nb = sc[top]
    for i in range(top - 1, -1, -1):
        nb, k = _chan_coef(sc[i], nb, coef, k), k + 1


@njit(inline="always")
def _chan_coef(na, nb, coef, k):
    # merge k of two nodes over na and nb values -> coef[k]; returns na + nb
    two = power_of_two(na) and power_of_two(nb)
    coef[k, 0], coef[k, 1], coef[k, 2] = na * nb / (na + nb), 1.0 / na if two else 0.0, 1.0 / nb if two else 0.0
    coef[k, 3], coef[k, 4] = na, nb
    return na + nb


@njit(cache=True, nogil=True)
def bn_moments_tree_into(parts, counts, out):
    # parts (S,2D) float64, shard rows [sum | M2], counts (S,) float64 values per statistic in each
    # shard   ->   out (2D,) the batch's [sum | M2] through tree_sum's tree (bn_moments_tree_range)
    bn_moments_tree_range(parts, counts, out, 0, parts.shape[1] // 2, 1)


@njit(inline="always")
def bn_moments_tree_range(parts, counts, out, d0, d1, step):
    # bn_moments_tree_into for the statistics d0 <= d < d1 only (out's [d0:d1] and [D+d0:D+d1]) of
    # the rows 0, step, 2*step, .. of parts, each over the values of counts[j*step : (j+1)*step]
    # (step = 2^k: the nodes of level k of the tree over all rows, which bn_moments_rows_done with
    # top = k leaves there): tree_sum's tree on a stack of finished left subtrees (reduce.tree_push's
    # order: the same nodes and operands as pairing level by level), 64 statistics at a time (four
    # independent 16-lane chains), then 16, then one by one; the rows read once, the stack in L1;
    # parts is only read
    L, W = parts.shape
    D = W // 2
    S = -(-L // step)                           # the rows in the tree
    if S <= 2:                                  # one row, or one merge (a thread or two's top nodes)
        _moments_top2(parts, counts, out, d0, d1, step)
        return
    nc = np.zeros(S)                            # (S,) their value counts
    for j in range(L):
        nc[j // step] += counts[j]
    ss = np.empty((LEVELS, 2, 64))              # (LEVELS,2,64) the stack's [sums | M2s]
    sc = np.empty(LEVELS)                       # (LEVELS,) value counts
    lev = np.empty(LEVELS, np.int64)            # (LEVELS,) the stack's heights
    coef = np.empty((max(S - 1, 1), 5))         # (S-1,5) the merges' coefficients
    _chan_coefs(nc, coef, lev, sc)
    V64 = d1 - (d1 - d0) % 64
    V16 = d1 - (d1 - V64) % 16
    for d in range(d0, V64, 64):
        _chan_tree_block(parts, S, step, d, 4, ss, lev, coef, out)
    for d in range(V64, V16, 16):
        _chan_tree_block(parts, S, step, d, 1, ss, lev, coef, out)
    for d in range(V16, d1):
        top, k = 0, 0
        for j in range(S):
            sb, mb, h = parts[j * step, d], parts[j * step, D + d], 0
            while top > 0 and lev[top - 1] == h:
                top -= 1
                sb, mb = _chan_scalar(ss[top, 0, 0], ss[top, 1, 0], sb, mb, coef, k)
                h, k = h + 1, k + 1
            ss[top, 0, 0], ss[top, 1, 0], lev[top] = sb, mb, h
            top += 1
        top -= 1
        sb, mb = ss[top, 0, 0], ss[top, 1, 0]
        for i in range(top - 1, -1, -1):
            sb, mb = _chan_scalar(ss[i, 0, 0], ss[i, 1, 0], sb, mb, coef, k)
            k += 1
        out[d], out[D + d] = sb, mb


@njit(inline="always")
def _moments_top2(parts, counts, out, d0, d1, step):
    # bn_moments_tree_range over S <= 2 rows (0 and step): row 0 copied, or the two merged
    # (_chan_pair; no stack)
    L, W = parts.shape
    D = W // 2
    if L <= step:
        os_, om, sa, ma = out[d0:d1], out[D + d0:D + d1], parts[0, d0:d1], parts[0, D + d0:D + d1]
        for i in range(d1 - d0):                # (views from 0: a loop LLVM vectorizes)
            os_[i] = sa[i]
            om[i] = ma[i]
        return
    na, nb = 0.0, 0.0
    for q in range(step):
        na += counts[q]
    for q in range(step, L):
        nb += counts[q]
    coef = np.empty((1, 5))                     # (1,5) the merge's coefficients
    _chan_coef(na, nb, coef, 0)
    _chan_pair(parts.reshape(L * W), 0, step * W, out, 0, D, d0, d1, coef)


@njit(inline="always")
def _chan_pair(src, ra, rb, dst, ro, D, d0, d1, coef):
    # statistics d0 <= d < d1 of two [sum | M2] nodes in the flat src (sums at ra + d and rb + d,
    # M2s D further on) merged by merge 0 of coef   ->   dst[ro + d], dst[ro + D + d] (dst may be src
    # with ro = ra: each statistic is read before it is written): 16 at a time, then one by one
    V = d1 - (d1 - d0) % 16
    for d in range(d0, V, 16):
        sv, mv = _chan(vload(src, ra + d), vload(src, ra + D + d), vload(src, rb + d), vload(src, rb + D + d),
                       coef, 0)
        vstore(dst, ro + d, sv)
        vstore(dst, ro + D + d, mv)
    for d in range(V, d1):
        sv, mv = _chan_scalar(src[ra + d], src[ra + D + d], src[rb + d], src[rb + D + d], coef, 0)
        dst[ro + d], dst[ro + D + d] = sv, mv


@njit(inline="always")
def _chan_tree_block(parts, S, step, d, n, ss, lev, coef, out):
    # statistics d .. d + 16n - 1 (n <= 4 vectors) of bn_moments_tree_range over the S rows 0,
    # step, ..: each merge is n independent vector merges, through the stack ss (LEVELS,2,64)
    W = parts.shape[1]
    D = W // 2
    top, k = 0, 0
    for j in range(S):
        h = 0
        q, r = top * 128, j * step * W         # the leaf goes to the stack's top, then sinks
        for u in range(n):
            vstore(ss, q + 16 * u, vload(parts, r + d + 16 * u))
            vstore(ss, q + 64 + 16 * u, vload(parts, r + D + d + 16 * u))
        while top > 0 and lev[top - 1] == h:
            a, b = (top - 1) * 128, top * 128
            for u in range(n):
                sv, mv = _chan(vload(ss, a + 16 * u), vload(ss, a + 64 + 16 * u),
                               vload(ss, b + 16 * u), vload(ss, b + 64 + 16 * u), coef, k)
                vstore(ss, a + 16 * u, sv)
                vstore(ss, a + 64 + 16 * u, mv)
            top, h, k = top - 1, h + 1, k + 1
        lev[top] = h
        top += 1
    for i in range(top - 2, -1, -1):
        a, b = i * 128, (i + 1) * 128
        for u in range(n):
            sv, mv = _chan(vload(ss, a + 16 * u), vload(ss, a + 64 + 16 * u),
                           vload(ss, b + 16 * u), vload(ss, b + 64 + 16 * u), coef, k)
            vstore(ss, a + 16 * u, sv)
            vstore(ss, a + 64 + 16 * u, mv)
        k += 1
    for u in range(n):
        vstore(out, d + 16 * u, vload(ss, 16 * u))
        vstore(out, D + d + 16 * u, vload(ss, 64 + 16 * u))


@njit(inline="always")
def bn_moments_rows_done(sync, base, parts, counts, j, top):
    # row j of the shards' [sum | M2] rows parts (L,2D) is written (counts (L,) values per statistic
    # in each): the merges of the moments tree it completes up to level top (reduce.tree_climb;
    # right into left row with Chan's rule, in place): node i of level top ends in row i * 2^top,
    # and bn_moments_tree_range with step 2^top over them has bn_moments_tree_into's bits
    L, W = parts.shape
    D = W // 2
    flat = parts.reshape(L * W)                 # (L*2D,) the same memory
    coef = np.empty((1, 5))                     # (1,5) the merge's coefficients (_chan_coef)
    k, i = 0, j
    while True:
        k, i, a, b, hi = tree_climb(sync, base, L, k, i, top)
        if k < 0:
            return
        na, nb = 0.0, 0.0
        for q in range(a, b):
            na += counts[q]
        for q in range(b, hi):
            nb += counts[q]
        _chan_coef(na, nb, coef, 0)
        _chan_pair(flat, a * W, b * W, flat, a * W, D, 0, D, coef)   # (into row a, in place)


@njit(cache=True, nogil=True)
def rows_done_job_into(sync, base, parts, counts, moments, order, top):
    # a test job for the trees made as rows finish, run by any number of threads at once: each
    # takes the next index of order (L,) int64 (counter 0) and reports row order[i] of parts (L,M)
    # written; moments: [sum | M2] rows merged by Chan's rule, else added   ->   the nodes of level
    # top in rows 0, 2^top, .. (the root in row 0 when 2^top >= L)
    while True:
        i = take(sync, 0)
        if i >= order.shape[0]:
            return
        if moments:
            bn_moments_rows_done(sync, base, parts, counts, order[i], top)
        else:
            tree_rows_done(sync, base, parts, order[i], top)


def bn_moments_tree(parts, counts):
    """The batch's [sum | M2] from the shards' rows parts (S,2D) and their values per statistic
    counts (S,), through tree_sum's tree (bn_moments_tree_into)."""
    parts = check_array("parts", parts, (None, None), np.float64)
    counts = check_array("counts", counts, (parts.shape[0],), np.float64)
    if parts.shape[0] < 1 or parts.shape[1] % 2 or not np.all(counts > 0):
        raise ValueError(f"parts must be (S >= 1, 2D) with counts > 0, got {parts.shape} and {counts}")
    out = np.empty(parts.shape[1])                                      # (2D,) float64
    bn_moments_tree_into(parts, counts, out)
    return out
