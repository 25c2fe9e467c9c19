"""Training BN's statistics: each shard's moments, then from the batch's moments the mean, variance,
invstd and the running statistics' update. Not the shards' tree (bntree.py), the normalization or
its gradients (batchnorm.py, bnpool.py), nor the cross-rank gather (distributed.Comm).
"""

# Training batch normalization's statistics, one shard at a time and then the batch: each shard's
# moments (its sum and its sum of squared deviations about its own mean, per channel in float64
# vectors, per unit in the dtype; a conv layer's bias added on the way) and, from the batch's
# moments, the mean, variance, invstd and the running statistics' update. Not the shards' tree
# that makes the batch's moments (bntree.py), not the normalization or its gradients
# (batchnorm.py, bnpool.py), not the cross-rank gather (distributed.Comm).
#
# Shape legend: N images of a shard, D statistics (units of a flat layer, or C channels of maps of
# S positions).

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .checks import check_bn_z
from .simd import vadd, vdiv, vfma, vhsum, vload, vmul, vsplat, vsqrt, vstore, vsub, vwiden, vzero


# The forward's statistics in one phase: each shard's sum and its sum of squared deviations about
# its OWN mean (M2), both while its z is still in cache; the shards' (sum, M2) then meet in
# tree_sum's pairwise tree (bntree.py). Per unit a shard's few images (8) are added in the dtype, as
# the backward's per-unit sums are (bnpool.py), and only the shard's sum and M2 go into the float64
# row: float32 lanes do twice the work of float64 lanes per instruction and need no widening.

@njit(inline="always")
def _unit_block(z, d, out):
    # units d .. d+15 of z (N,D)   ->   out[d..], out[D + d..]; only loads from z (a store to z
    # here would sit D*4 bytes, a multiple of 4 KiB, before the next image's load of the same
    # lanes: the store-to-load aliasing that doubled this loop's time when it added the bias)
    N, D = z.shape
    acc = vzero(z)
    for n in range(N):
        acc = vadd(acc, vload(z, n * D + d))
    _unit_sum_m2(z, D, d, N, acc, d, out)


@njit(inline="always")
def _unit_sum_m2(src, stride, off, N, acc, d, out):
    # a block's 16 units over N images (image n's vector at src[n * stride + off]) with their sums
    # acc (the dtype)   ->   out[d..] = acc, out[D + d..] = the sums of squared deviations about the
    # block's means, both in float64 (D = out's length / 2); the mean and the deviations in the dtype
    D = out.shape[0] // 2
    vstore(out, d, vwiden(acc))
    if power_of_two(float(N)):                   # (x / 2^k = x * 2^-k exactly)
        mean = vmul(acc, vsplat(src.dtype.type(1.0 / N)))
    else:
        mean = vdiv(acc, vsplat(src.dtype.type(N)))
    m2 = vzero(src)
    for n in range(N):
        t = vsub(vload(src, n * stride + off), mean)
        m2 = vadd(m2, vmul(t, t))                # (not an fma: the bits of _unit_scalar, lane by lane)
    vstore(out, D + d, vwiden(m2))


@njit(inline="always")
def _unit_scalar(z, d, out):
    # unit d of z (N,D) -> out[d], out[D + d], the operations of one lane of _unit_block
    N, D = z.shape
    t = z.dtype.type(0)
    for n in range(N):
        t += z[n, d]
    out[d] = t
    mean = t * z.dtype.type(1.0 / N) if power_of_two(float(N)) else t / z.dtype.type(N)
    m2 = z.dtype.type(0)
    for n in range(N):
        u = z[n, d] - mean
        m2 += u * u
    out[D + d] = m2


@njit(cache=True, nogil=True)
def bn_unit_moments_into(z, out):
    # z (N,D)   ->   out (2D,) float64: [sum over n (in order) | sum over n of (z - shard mean)^2],
    # each made in the dtype (_unit_sum_m2), 16 units at a time (each block through all n in
    # registers), the last D % 16 units one by one
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
    acc = vzero(z)
    for n in range(N):
        v = vadd(vload(z, n * D + d), bv)
        vstore(tmp, n * 16, v)
        acc = vadd(acc, v)
    for n in range(N):
        vstore(z, n * D + d, vload(tmp, n * 16))
    _unit_sum_m2(tmp, 16, 0, N, acc, d, out)


@njit(inline="always")
def power_of_two(x):
    # x (a positive float count) is 2^k: then dividing by it is multiplying by 1/x, exactly
    return math.frexp(x)[0] == 0.5


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
    if power_of_two(M):
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
    if running_mean.shape[0] == D:              # views from d0 (bncoef.bn_coef_forward_range's note)
        rm, rv, mean, var = running_mean[d0:d1], running_var[d0:d1], stats[0, d0:d1], stats[1, d0:d1]
        for i in range(d1 - d0):
            rm[i] = rm[i] * keep + mean[i] * m
            rv[i] = rv[i] * keep + var[i] * unbias


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
