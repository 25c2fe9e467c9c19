"""Training batch normalization's statistics, one shard at a time and then the batch: each shard's
moments (its sum and its sum of squared deviations about its own mean, in float64 vectors, a conv
layer's bias added on the way), their pairwise tree, and from the batch's moments the mean,
variance, invstd and the running statistics' update. Not the normalization or its gradients
(batchnorm.py, bnpool.py), not the cross-rank gather (distributed.Comm).

Shape legend: N images of a shard, D statistics (units of a flat layer, or C channels of maps of
S positions), S shards in the tree (bn_moments_tree).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .checks import check_array, check_bn_z
from .reduce import LEVELS, tree_climb, tree_rows_done
from .sync import take
from .simd import vadd, vdiv, vfma, vhsum, vload, vmul, vsplat, vsqrt, vstore, vsub, vwiden, vzero


# The forward's statistics in one phase: each shard's sum and its sum of squared deviations about
# its OWN mean (M2), both while its z is still in cache; the shards' (sum, M2) then meet in
# tree_sum's pairwise tree, M2 combined as Chan, Golub and LeVeque's parallel variance:
#   M2 = M2a + M2b + (mean_b - mean_a)^2 * n_a n_b / (n_a + n_b),   mean = sum / n
# (the sums add exactly as tree_sum adds them, so the mean is tree_sum's bits).

@njit(inline="always")
def _unit_block(z, d, out):
    # units d .. d+15 of z (N,D)   ->   out[d..], out[D + d..]; only loads from z (a store to z
    # here would sit D*4 bytes, a multiple of 4 KiB, before the next image's load of the same
    # lanes: the store-to-load aliasing that doubled this loop's time when it added the bias)
    N, D = z.shape
    acc = vzero(out)
    for n in range(N):
        acc = vadd(acc, vwiden(vload(z, n * D + d)))
    _unit_sum_m2(z, D, d, N, acc, d, out)


@njit(inline="always")
def _unit_sum_m2(src, stride, off, N, acc, d, out):
    # a block's 16 units over N images (image n's vector at src[n * stride + off]) with their sums
    # acc (float64)   ->   out[d..] = acc, out[D + d..] = the sums of squared deviations about the
    # block's means (D = out's length / 2)
    D = out.shape[0] // 2
    vstore(out, d, acc)
    mean = vmul(acc, vsplat(1.0 / N)) if _power_of_two(float(N)) else vdiv(acc, vsplat(float(N)))   # (exact)
    m2 = vzero(out)
    for n in range(N):
        t = vsub(vwiden(vload(src, n * stride + off)), mean)
        m2 = vadd(m2, vmul(t, t))                # (not an fma: the bits of _unit_scalar, lane by lane)
    vstore(out, D + d, m2)


@njit(inline="always")
def _unit_scalar(z, d, out):
    # unit d of z (N,D) -> out[d], out[D + d], the operations of one lane of _unit_block
    N, D = z.shape
    t = 0.0
    for n in range(N):
        t += z[n, d]
    out[d] = t
    mean = t / N
    m2 = 0.0
    for n in range(N):
        u = z[n, d] - mean
        m2 += u * u
    out[D + d] = m2


@njit(cache=True, nogil=True)
def bn_unit_moments_into(z, out):
    # z (N,D)   ->   out (2D,) float64: [sum over n (in order) | sum over n of (z - shard mean)^2],
    # 16 units at a time in float64 vectors (each block through all n in registers), the last
    # D % 16 units one by one
    N, D = z.shape
    V = D - D % 16
    for d in range(0, V, 16):
        _unit_block(z, d, out)
    for d in range(V, D):
        _unit_scalar(z, d, out)


@njit(inline="always")
def _channel_moments(z, b, add_bias, out):
    # z (N,C,S) (+ b[c] in place first when add_bias)   ->   out (2C,) float64: [sum | sum of
    # (z - shard mean)^2] per channel over (n, i): 16 float64 lanes over n and i in order (the last
    # S % 16 positions one by one into a scalar), the lanes added left to right, then the scalar
    N, C, S = z.shape
    V = S - S % 16
    for c in range(C):
        acc = vzero(out)
        t = 0.0
        for n in range(N):
            base = (n * C + c) * S
            for i in range(0, V, 16):
                v = vload(z, base + i)
                if add_bias:
                    v = vadd(v, vsplat(b[c]))
                    vstore(z, base + i, v)
                acc = vadd(acc, vwiden(v))
            for i in range(V, S):
                if add_bias:
                    z[n, c, i] += b[c]
                t += z[n, c, i]
        total = vhsum(acc) + t
        out[c] = total
        m = total / (N * S)
        mv = vsplat(m)
        acc = vzero(out)
        t = 0.0
        for n in range(N):
            base = (n * C + c) * S
            for i in range(0, V, 16):
                u = vsub(vwiden(vload(z, base + i)), mv)
                acc = vfma(u, u, acc)
            for i in range(V, S):
                u = z[n, c, i] - m
                t += u * u
        out[C + c] = vhsum(acc) + t


@njit(cache=True, nogil=True)
def bn_channel_moments_into(z, out):
    # z (N,C,S)   ->   out (2C,) float64 (_channel_moments)
    _channel_moments(z, np.empty(0, z.dtype), False, out)


@njit(cache=True, nogil=True)
def bn_bias_moments_into(z, b, out):
    # z (N,C,S) a conv layer's output without its bias, b (C,)   ->   z += b in place (the bits of
    # conv.add_bias_into) and out = BN's moments of the result: (2C,) per channel or (2CS,) per
    # unit (the bits of bn_channel_moments_into / bn_unit_moments_into); per channel in one pass
    # fewer, per unit in one (_unit_bias_block)
    N, C, S = z.shape
    if out.shape[0] == 2 * C:
        _channel_moments(z, b, True, out)
        return
    D = C * S
    zf = z.reshape(N, D)
    if S % 16:                                   # (a unit block would straddle two channels)
        for n in range(N):
            for c in range(C):
                for i in range(S):
                    z[n, c, i] += b[c]
        bn_unit_moments_into(zf, out)
        return
    tmp = np.empty(N * 16, z.dtype)              # (N*16,) a block's N vectors, in L1
    for d in range(0, D, 16):
        _unit_bias_block(zf, vsplat(b[d // S]), d, tmp, out)


@njit(inline="always")
def _unit_bias_block(z, bv, d, tmp, out):
    # units d .. d+15 of z (N,D): z += bv in place, then out[d..], out[D + d..] as _unit_block
    # gives them, in one pass over z: the N vectors are loaded (bias added, kept in tmp), then
    # stored, so no load of the block follows a store to its lanes D*4 bytes away (_unit_block's note)
    N, D = z.shape
    acc = vzero(out)
    for n in range(N):
        v = vadd(vload(z, n * D + d), bv)
        vstore(tmp, n * 16, v)
        acc = vadd(acc, vwiden(v))
    for n in range(N):
        vstore(z, n * D + d, vload(tmp, n * 16))
    _unit_sum_m2(tmp, 16, 0, N, acc, d, out)


@njit(inline="always")
def _power_of_two(x):
    # x (a positive float count) is 2^k: then dividing by it is multiplying by 1/x, exactly
    return math.frexp(x)[0] == 0.5


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
    two = _power_of_two(na) and _power_of_two(nb)
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
    V = D - D % 16
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
        ra, rb = a * W, b * W
        for d in range(0, V, 16):
            sv, mv = _chan(vload(parts, ra + d), vload(parts, ra + D + d), vload(parts, rb + d),
                           vload(parts, rb + D + d), coef, 0)
            vstore(parts, ra + d, sv)
            vstore(parts, ra + D + d, mv)
        for d in range(V, D):
            sv, mv = _chan_scalar(parts[a, d], parts[a, D + d], parts[b, d], parts[b, D + d], coef, 0)
            parts[a, d], parts[a, D + d] = sv, mv


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


@njit(cache=True, nogil=True)
def bn_stats_into(moments, M, eps, stats, keep, m, unbias, running_mean, running_var):
    # moments (2D,) float64 the batch's [sum | M2] over M values per statistic   ->   stats rows
    # 0, 1, 2 (D,) float64: mean, biased var, invstd = 1 / sqrt(var + eps); and when running_mean
    # has D values (the network keeps running statistics, in its dtype): running = running * keep
    # + stat * m, the variance's stat unbiased (unbias = m * M / (M - 1)), keep = 1 - m in the
    # buffers' dtype: the operations (and bits) of the same update written with numpy's in-place
    # operators on those buffers
    bn_stats_range(moments, M, eps, stats, keep, m, unbias, running_mean, running_var, 0, moments.shape[0] // 2)


@njit(inline="always")
def bn_stats_range(moments, M, eps, stats, keep, m, unbias, running_mean, running_var, d0, d1):
    # bn_stats_into for the statistics d0 <= d < d1 only: 16 at a time in float64 vectors (IEEE
    # division and square root lane by lane: the scalar tail's bits), a power-of-two M as a
    # multiplication by its exact reciprocal
    D = moments.shape[0] // 2
    V = d1 - (d1 - d0) % 16
    if _power_of_two(M):
        for d in range(d0, V, 16):
            _stats_block(moments, d, vsplat(1.0 / M), vsplat(eps), stats, True)
    else:
        for d in range(d0, V, 16):
            _stats_block(moments, d, vsplat(M), vsplat(eps), stats, False)
    for d in range(V, d1):
        mean = moments[d] / M
        var = moments[D + d] / M
        stats[0, d] = mean
        stats[1, d] = var
        stats[2, d] = 1.0 / math.sqrt(var + eps)
    if running_mean.shape[0] == D:
        for d in range(d0, d1):
            running_mean[d] = running_mean[d] * keep + stats[0, d] * m
            running_var[d] = running_var[d] * keep + stats[1, d] * unbias


@njit(inline="always")
def _stats_block(moments, d, vm, veps, stats, reciprocal):
    # statistics d .. d+15 of bn_stats_range: vm is M's reciprocal (reciprocal) or M
    D = moments.shape[0] // 2
    s, q = vload(moments, d), vload(moments, D + d)
    mean, var = (vmul(s, vm), vmul(q, vm)) if reciprocal else (vdiv(s, vm), vdiv(q, vm))
    vstore(stats, d, mean)
    vstore(stats, D + d, var)
    vstore(stats, 2 * D + d, vdiv(vsplat(1.0), vsqrt(vadd(var, veps))))


def bn_moments(z):
    """One shard's float64 [sum | sum of (z - its own mean)^2] per statistic: z (N,D) per unit or
    (N,C,S) per channel -> (2D,) or (2C,)."""
    check_bn_z("z", z)
    out = np.empty(2 * z.shape[1])                                      # (2D,) or (2C,) float64
    (bn_unit_moments_into if z.ndim == 2 else bn_channel_moments_into)(z, out)
    return out


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
