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
from .simd import vadd, vdiv, vfma, vhsum, vload, vmul, vsplat, vstore, vsub, vwiden, vzero


# The forward's statistics in one phase: each shard's sum and its sum of squared deviations about
# its OWN mean (M2), both while its z is still in cache; the shards' (sum, M2) then meet in
# tree_sum's pairwise tree, M2 combined as Chan, Golub and LeVeque's parallel variance:
#   M2 = M2a + M2b + (mean_b - mean_a)^2 * n_a n_b / (n_a + n_b),   mean = sum / n
# (the sums add exactly as tree_sum adds them, so the mean is tree_sum's bits).

@njit(inline="always")
def _unit_block(z, d, bv, add_bias, out):
    # units d .. d+15 of z (N,D) (+ bv in place first when add_bias) -> out[d..], out[D + d..]
    N, D = z.shape
    acc = vzero(out)
    for n in range(N):
        v = vload(z, n * D + d)
        if add_bias:
            v = vadd(v, bv)
            vstore(z, n * D + d, v)
        acc = vadd(acc, vwiden(v))
    vstore(out, d, acc)
    mean = vmul(acc, vsplat(1.0 / N)) if _power_of_two(float(N)) else vdiv(acc, vsplat(float(N)))   # (exact)
    m2 = vzero(out)
    for n in range(N):
        t = vsub(vwiden(vload(z, n * D + d)), mean)
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
        _unit_block(z, d, vsplat(z.dtype.type(0)), False, out)
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
    # unit (the bits of bn_channel_moments_into / bn_unit_moments_into), in one pass fewer
    N, C, S = z.shape
    if out.shape[0] == 2 * C:
        _channel_moments(z, b, True, out)
        return
    zu = z.reshape(N, C * S)                     # (N,D) per unit, D = C*S
    V = S - S % 16
    for c in range(C):
        bv = vsplat(b[c])
        for d in range(c * S, c * S + V, 16):
            _unit_block(zu, d, bv, True, out)
        for d in range(c * S + V, (c + 1) * S):
            for n in range(N):
                zu[n, d] += b[c]
            _unit_scalar(zu, d, out)


@njit(inline="always")
def _power_of_two(x):
    # x (a positive float count) is 2^k: then dividing by it is multiplying by 1/x, exactly
    return math.frexp(x)[0] == 0.5


@njit(inline="always")
def _chan_store(src, dst, ra, rb, ro, D, d, sa, sb, delta, vf):
    # statistics d .. d+15 of _chan_pair given the two rows' sums and their means' difference delta
    m2 = vadd(vadd(vload(src, ra + D + d), vload(src, rb + D + d)), vmul(vmul(delta, delta), vf))
    vstore(dst, ro + D + d, m2)
    vstore(dst, ro + d, vadd(sa, sb))


@njit(nogil=True)
def _chan_pair(src, a, b, na, nb, dst, o, d0, d1):
    # rows a and b of src (.,2D) [sum | M2] over na and nb values -> row o of dst, statistics
    # d0 <= d < d1: sums added, M2s combined (Chan et al.); 16 statistics at a time in float64
    # vectors, the same operations as the scalar tail lane by lane (so any range gives each
    # statistic the same bits). dst may be src with o <= a (every value is read before written).
    W = src.shape[1]
    D = W // 2
    V = d1 - (d1 - d0) % 16
    f = na * nb / (na + nb)
    ra, rb, ro = a * W, b * W, o * W
    va, vb, vf = vsplat(na), vsplat(nb), vsplat(f)
    if _power_of_two(na) and _power_of_two(nb):       # x / 2^k = x * 2^-k exactly: 16 divisions fewer
        ia, ib = vsplat(1.0 / na), vsplat(1.0 / nb)
        for d in range(d0, V, 16):
            sa, sb = vload(src, ra + d), vload(src, rb + d)
            _chan_store(src, dst, ra, rb, ro, D, d, sa, sb, vsub(vmul(sb, ib), vmul(sa, ia)), vf)
    else:
        for d in range(d0, V, 16):
            sa, sb = vload(src, ra + d), vload(src, rb + d)
            _chan_store(src, dst, ra, rb, ro, D, d, sa, sb, vsub(vdiv(sb, vb), vdiv(sa, va)), vf)
    for d in range(V, d1):
        sa, sb = src[a, d], src[b, d]
        delta = sb / nb - sa / na
        dst[o, D + d] = src[a, D + d] + src[b, D + d] + delta * delta * f
        dst[o, d] = sa + sb


@njit(inline="always")
def _copy_stats(src, i, dst, d0, d1):
    # dst[d0:d1] and dst[D+d0:D+d1] = those of row i of src (.,2D) (loops: numba compiles a slice
    # assignment several times slower)
    D = src.shape[1] // 2
    for d in range(d0, d1):
        dst[d] = src[i, d]
        dst[D + d] = src[i, D + d]


@njit(cache=True, nogil=True)
def bn_moments_tree_into(parts, counts, out):
    # parts (S,2D) float64, shard rows [sum | M2], counts (S,) values per statistic in each shard
    #   ->   out (2D,) the batch's [sum | M2]: rows 2i and 2i+1 combined level by level into row i,
    #   an odd last row carried up (tree_sum's tree). The first level reads parts, the next ones
    #   work in place in a half-size buffer. counts float64.
    S, W = parts.shape
    bn_moments_tree_range(parts, counts, out, 0, W // 2, np.empty(((S + 1) // 2, W)))


@njit(inline="always")
def bn_moments_tree_range(parts, counts, out, d0, d1, work):
    # bn_moments_tree_into for the statistics d0 <= d < d1 only (out's [d0:d1] and [D+d0:D+d1]),
    # every level after the first in work (>= ceil(S/2) rows of 2D float64): parts itself sums in
    # place (each row is read before it is written), a large step's chunks without a (S/2, 2D)
    # allocation each
    S = parts.shape[0]
    cnt = np.empty((S + 1) // 2)                # (ceil(S/2),) the levels' value counts
    src, src_cnt, n = parts, counts, S
    while n > 1:
        half = n // 2
        for i in range(half):
            na, nb = src_cnt[2 * i], src_cnt[2 * i + 1]
            _chan_pair(src, 2 * i, 2 * i + 1, na, nb, work, i, d0, d1)
            cnt[i] = na + nb
        if n % 2:
            _copy_stats(src, n - 1, work[half], d0, d1)
            cnt[half] = src_cnt[n - 1]
        src, src_cnt, n = work, cnt, half + n % 2
    _copy_stats(src, 0, out, d0, d1)


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
    # bn_stats_into for the statistics d0 <= d < d1 only
    D = moments.shape[0] // 2
    for d in range(d0, d1):
        mean = moments[d] / M
        var = moments[D + d] / M
        stats[0, d] = mean
        stats[1, d] = var
        stats[2, d] = 1.0 / math.sqrt(var + eps)
    if running_mean.shape[0] == D:
        for d in range(d0, d1):
            running_mean[d] = running_mean[d] * keep + stats[0, d] * m
            running_var[d] = running_var[d] * keep + stats[1, d] * unbias


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
