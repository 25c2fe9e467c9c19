"""Training-mode BN of the two conv layers fused with their 2x2 max pool + ELU, one shard at a time,
in 16-lane vectors: BN's output, xhat and dy are never stored. Not the coefficients (bncoef.py),
the statistics (bnstats.py), fc1's BN (no pooling there) nor the inference path (inference.py).
"""

# Training-mode batch normalization of the two conv layers fused with their 2x2 max pool + ELU,
# one shard at a time, in 16-lane vectors (simd.py): the forward pools ELU(BN(z)) straight from z;
# the backward's two passes (the shard's sums of dy and dy*xhat, then dz once the batch's sums are
# known) unpool dp and recompute xhat from z as they go. BN's output, xhat and dy are never stored.
#
# Shape legend: N images, C maps, H = W = 32 (conv1, pooled into conv2's input padded by o = 2) or
# 16 (conv2, pooled into fc1's input, o = 0), S = H*W, D = C (per channel) or C*S (per unit).
# coef (6, C*S) in the dtype, per position the values of the statistic that covers it (a channel's
# repeated over its map): m = mean, inv = 1/sqrt(var + eps), a = gamma * inv, beta; and for the
# backward, with M values per statistic in the batch, B = -a * sum(dy) / M and G = -a * sum(dy*xhat) / M:
#     forward:  y = (z - m) * a + beta                 (= gamma * xhat + beta)
#     sums:     sum(dy), sum(dy * xhat), xhat = (z - m) * inv: per channel in float64 lanes, per unit in
#               the dtype over each group of images, then in a float64 row
#     backward: dz = a * dy + (G * xhat + B)          (= gamma*inv/M * (M dy - sum dy - xhat sum dy*xhat))
# Every array C-contiguous. Each 4-vector block is 64 values of a map: two rows of 32 (16 windows
# of one pooled row) or four rows of 16 (8 windows of two pooled rows).

from __future__ import annotations

import numpy as np
from numba import njit

from .activation import velu
from .bncoef import A_ROW, B_ROW, BETA_ROW, G_ROW, INV_ROW, M_ROW, bn_coef_backward_into, bn_coef_forward_into
from .checks import check_array
from .pool import _positions, _window_max_v, _windows
from .simd import (vadd, vfma, vhsum, vload, vload_i8, vmul, vsel_eq, vsel_gt, vsplat, vstore,
                   vstore_i8, vsub, vwiden, vzero, vzip_hi, vzip_lo)

# The per-map loops below index every array in place and call only helpers on vectors: an array
# handed to a helper inside a loop costs a reference count (an atomic) per call.

# Per unit, the loops hold a block's coefficients in registers through GROUP images at a time: the
# images of a group are read side by side, one stream per image and array, and the hardware
# prefetchers follow about four such streams of each array, not a whole shard's (8 images: the
# backward then ran ~1.5x slower on arrays out of L2, scripts/bn_unit_group.py).
GROUP = 4

@njit(inline="always")
def _memory(W, e0, e1, e2, e3):
    # the inverse of _windows: positions 0..3 of 16 windows -> the block's 4 vectors in memory order
    if W == 32:
        return vzip_lo(e0, e1), vzip_hi(e0, e1), vzip_lo(e2, e3), vzip_hi(e2, e3)
    return vzip_lo(e0, e1), vzip_lo(e2, e3), vzip_hi(e0, e1), vzip_hi(e2, e3)


@njit(inline="always")
def _routed(g, kv, pos):
    # g at each window's winner position kv, 0 at the other three: positions 0..3
    zero = pos[0]
    return (vsel_eq(kv, pos[0], g, zero), vsel_eq(kv, pos[1], g, zero),
            vsel_eq(kv, pos[2], g, zero), vsel_eq(kv, pos[3], g, zero))


@njit(inline="always")
def _elu_grad(dv, pv, one, zero):
    # dp * ELU'(p): ELU' = 1 where p > 0, else p + 1
    return vsel_gt(pv, zero, dv, vmul(dv, vadd(pv, one)))


@njit(inline="always")
def _pooled_at(Hq, Wq, o, n, C, c, i, W):
    # flat offset in pp (N,C,Hq,Wq) of block i's 16 pooled values (a row of 16, or two rows of 8, o = 0)
    if W == 32:
        return ((n * C + c) * Hq + o + i) * Wq + o
    return (n * C + c) * Hq * Wq + i * 16


@njit(inline="always")
def _load4(a, q):
    # the 4 vectors of a (flat) from q: a block of 64 values
    return vload(a, q), vload(a, q + 16), vload(a, q + 32), vload(a, q + 48)


@njit(inline="always")
def _map_setup(arg, pp, coef, n, c, W):
    # the sizes and constants of map (n, c)'s loop: C, S, E (coef's columns), pp's Hq and Wq, the
    # map's flat offset in z, the positions 0..3 and 1 as vectors
    C, S = arg.shape[1], W * W
    return C, S, coef.shape[1], pp.shape[2], pp.shape[3], (n * C + c) * S, _positions(pp), vsplat(pp.dtype.type(1))


@njit(inline="always")
def _forward_map(z, coef, pp, o, arg, n, c, W):
    # map (n, c) per channel: pooled maxima of y = (z - m) * a + beta into pp, their positions
    # into arg; the map's m, a, beta are one value each, splat once
    C, S = arg.shape[1], W * W
    zo, cs = (n * C + c) * S, c * S
    pos = _positions(pp)
    m, a, b = vsplat(coef[M_ROW, cs]), vsplat(coef[A_ROW, cs]), vsplat(coef[BETA_ROW, cs])
    for i in range(S // 64):
        r = zo + i * 64
        y0, y1 = vfma(vsub(vload(z, r), m), a, b), vfma(vsub(vload(z, r + 16), m), a, b)
        y2, y3 = vfma(vsub(vload(z, r + 32), m), a, b), vfma(vsub(vload(z, r + 48), m), a, b)
        _pool_store(pp, o, arg, n, C, c, i, W, zo, pos, y0, y1, y2, y3)


@njit(inline="always")
def _pool_store(pp, o, arg, n, C, c, i, W, zo, pos, y0, y1, y2, y3):
    # block i of map (n, c): the ELU of its 16 windows' maxima into pp, their positions into arg
    p0, p1, p2, p3 = _windows(W, y0, y1, y2, y3)
    best, k = _window_max_v(p0, p1, p2, p3, pos)
    vstore(pp, _pooled_at(pp.shape[2], pp.shape[3], o, n, C, c, i, W), velu(best))
    vstore_i8(arg, zo // 4 + i * 16, k)


@njit(inline="always")
def _forward_units(z, coef, pp, o, arg, W, G):
    # per unit: G images at a time, block by block of 64 units, the block's m, a, beta in
    # registers through the group's images (the operations of _forward_map with each unit's own values)
    N, C = arg.shape[0], arg.shape[1]
    S, E = W * W, coef.shape[1]
    pos = _positions(pp)
    for n0 in range(0, N, G):
        for c in range(C):
            for i in range(S // 64):
                u = c * S + i * 64
                m0, m1, m2, m3 = _load4(coef, u)
                a0, a1, a2, a3 = _load4(coef, A_ROW * E + u)
                b0, b1, b2, b3 = _load4(coef, BETA_ROW * E + u)
                for n in range(n0, min(N, n0 + G)):
                    zo = (n * C + c) * S
                    r = zo + i * 64
                    y0, y1 = vfma(vsub(vload(z, r), m0), a0, b0), vfma(vsub(vload(z, r + 16), m1), a1, b1)
                    y2, y3 = vfma(vsub(vload(z, r + 32), m2), a2, b2), vfma(vsub(vload(z, r + 48), m3), a3, b3)
                    _pool_store(pp, o, arg, n, C, c, i, W, zo, pos, y0, y1, y2, y3)


@njit(cache=True, nogil=True)
def bn_pool_elu_forward_into(z, coef, pp, o, arg, unit):
    # z (N,C,W,W) BN's input, coef (6,C*W*W), unit: BN per unit (else per channel: coef's values
    # repeat over each map)   ->   pp (N,C,W/2+2o,W/2+2o): interior = ELU(max of each 2x2 window
    # of BN's output y), border left as is (0 = ELU(0)); arg (N,C,W/2,W/2) int8 0..3 (ties -> the
    # first, as pool.py)
    N, C = arg.shape[0], arg.shape[1]
    if z.shape[3] == 32 and unit:    # each case in a loop of its own (as pool.py: a test per map is slower)
        _forward_units(z, coef, pp, o, arg, 32, GROUP)
    elif z.shape[3] == 32:
        for n in range(N):
            for c in range(C):
                _forward_map(z, coef, pp, o, arg, n, c, 32)
    elif unit:
        _forward_units(z, coef, pp, o, arg, 16, GROUP)
    else:
        for n in range(N):
            for c in range(C):
                _forward_map(z, coef, pp, o, arg, n, c, 16)


@njit(inline="always")
def _sums_map(dp, pp, o, arg, z, coef, n, c, W, s1, s2):
    # map (n, c) of bn_unpool_sums_into per channel: its dy and dy*xhat added to the float64 lanes
    # (s1, s2), returned
    C, S, E, Hq, Wq, zo, pos, one = _map_setup(arg, pp, coef, n, c, W)
    m, inv = vsplat(coef[M_ROW, c * S]), vsplat(coef[INV_ROW, c * S])     # (one value each per channel)
    for i in range(S // 64):
        r = i * 64
        g = _elu_grad(vload(dp, zo // 4 + i * 16), vload(pp, _pooled_at(Hq, Wq, o, n, C, c, i, W)), one, pos[0])
        kv = vload_i8(arg, zo // 4 + i * 16, pp)
        x0, x1 = vmul(vsub(vload(z, zo + r), m), inv), vmul(vsub(vload(z, zo + r + 16), m), inv)
        x2, x3 = vmul(vsub(vload(z, zo + r + 32), m), inv), vmul(vsub(vload(z, zo + r + 48), m), inv)
        w0, w1, w2, w3 = _windows(W, x0, x1, x2, x3)
        xw = vsel_eq(kv, pos[0], w0, vsel_eq(kv, pos[1], w1, vsel_eq(kv, pos[2], w2, w3)))   # the winner's xhat
        s1 = vadd(s1, vwiden(g))
        s2 = vadd(s2, vwiden(vmul(g, xw)))
    return s1, s2


@njit(inline="always")
def _unit_sums(dp, pp, o, arg, z, coef, out, W, G):
    # bn_unpool_sums_into per unit: G images at a time, block by block of 64 units, each unit's dy
    # and dy*xhat over the group's images (in order) added in the dtype, in registers; each group's
    # sums then go into out in float64 (stored by the first group, added by the next). The sums stay
    # in window order (position k of the 16 windows) and each image adds its winners only, a masked
    # add per position: dy is 0 at the other three, and adding that 0 (or 0 * xhat, xhat finite)
    # would leave the same bits (a sum from +0 never holds -0); memory order in out
    N, C = arg.shape[0], arg.shape[1]
    S, E = W * W, coef.shape[1]
    Hq, Wq = pp.shape[2], pp.shape[3]
    pos = _positions(pp)
    one = vsplat(pp.dtype.type(1))
    zero = pos[0]
    for n0 in range(0, N, G):
        for c in range(C):
            for i in range(S // 64):
                r, u = i * 64, c * S + i * 64
                a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = zero
                m0, m1, m2, m3 = _load4(coef, u)
                m0, m1, m2, m3 = _windows(W, m0, m1, m2, m3)
                i0, i1, i2, i3 = _load4(coef, INV_ROW * E + u)
                i0, i1, i2, i3 = _windows(W, i0, i1, i2, i3)
                for n in range(n0, min(N, n0 + G)):
                    zo = (n * C + c) * S
                    g = _elu_grad(vload(dp, zo // 4 + i * 16), vload(pp, _pooled_at(Hq, Wq, o, n, C, c, i, W)), one,
                                  pos[0])
                    kv = vload_i8(arg, zo // 4 + i * 16, pp)
                    z0, z1, z2, z3 = _load4(z, zo + r)
                    z0, z1, z2, z3 = _windows(W, z0, z1, z2, z3)
                    zw = vsel_eq(kv, pos[0], z0, vsel_eq(kv, pos[1], z1, vsel_eq(kv, pos[2], z2, z3)))
                    mw = vsel_eq(kv, pos[0], m0, vsel_eq(kv, pos[1], m1, vsel_eq(kv, pos[2], m2, m3)))
                    iw = vsel_eq(kv, pos[0], i0, vsel_eq(kv, pos[1], i1, vsel_eq(kv, pos[2], i2, i3)))
                    xd = vmul(g, vmul(vsub(zw, mw), iw))
                    a0, b0 = vsel_eq(kv, pos[0], vadd(a0, g), a0), vsel_eq(kv, pos[0], vadd(b0, xd), b0)
                    a1, b1 = vsel_eq(kv, pos[1], vadd(a1, g), a1), vsel_eq(kv, pos[1], vadd(b1, xd), b1)
                    a2, b2 = vsel_eq(kv, pos[2], vadd(a2, g), a2), vsel_eq(kv, pos[2], vadd(b2, xd), b2)
                    a3, b3 = vsel_eq(kv, pos[3], vadd(a3, g), a3), vsel_eq(kv, pos[3], vadd(b3, xd), b3)
                a0, a1, a2, a3 = _memory(W, a0, a1, a2, a3)
                b0, b1, b2, b3 = _memory(W, b0, b1, b2, b3)
                for k, t in enumerate((a0, a1, a2, a3)):
                    _add_out(out, u + 16 * k, vwiden(t), n0 == 0)
                for k, t in enumerate((b0, b1, b2, b3)):
                    _add_out(out, E + u + 16 * k, vwiden(t), n0 == 0)


@njit(inline="always")
def _add_out(out, q, v, first):
    # out[q .. q+15] = v (the first group's sums) or out[q ..] + v (a later group's)
    vstore(out, q, v if first else vadd(vload(out, q), v))


@njit(cache=True, nogil=True)
def bn_unpool_sums_into(dp, pp, o, arg, z, coef, out):
    # dp (N,C,W/2,W/2) gradient of the pooled ELU output, pp and arg as the forward wrote them, z
    # (N,C,W,W) BN's input, coef (6,C*W*W) (rows m, inv)   ->   out (2D,) float64 [sum of dy |
    # sum of dy*xhat] of this shard (dy: dp routed to each window's winner through ELU'). Per
    # channel (D = C) over (n, position) in 16 float64 lanes, the lanes added left to right; per
    # unit (D = C*W*W) over each GROUP of images in order in the dtype, the groups' sums added in
    # float64.
    W = z.shape[3]
    per_unit = out.shape[0] // 2 != arg.shape[1]
    if W == 32 and per_unit:         # each case in a loop of its own, W a constant there
        _unit_sums(dp, pp, o, arg, z, coef, out, 32, GROUP)
    elif per_unit:
        _unit_sums(dp, pp, o, arg, z, coef, out, 16, GROUP)
    elif W == 32:
        _channel_sums(dp, pp, o, arg, z, coef, out, 32)
    else:
        _channel_sums(dp, pp, o, arg, z, coef, out, 16)


@njit(inline="always")
def _channel_sums(dp, pp, o, arg, z, coef, out, W):
    # bn_unpool_sums_into per channel: a channel's lanes summed over n in order, then added left to right
    N, C = arg.shape[0], arg.shape[1]
    acc = vzero(out)
    for c in range(C):
        s1, s2 = acc, acc
        for n in range(N):
            s1, s2 = _sums_map(dp, pp, o, arg, z, coef, n, c, W, s1, s2)
        out[c] = vhsum(s1)
        out[C + c] = vhsum(s2)


@njit(inline="always")
def _dz(d, zv, m, inv, a, g, b):
    # dz = a * dy + (G * xhat + B) of 16 values, xhat = (z - m) * inv
    return vfma(a, d, vfma(g, vmul(vsub(zv, m), inv), b))


@njit(inline="always")
def _backward_map(dp, pp, o, arg, z, coef, dz, n, c, W):
    # map (n, c) of bn_unpool_backward_into per channel: its five coefficients are one value each,
    # splat once
    C, S, E, Hq, Wq, zo, pos, one = _map_setup(arg, pp, coef, n, c, W)
    cs = c * S
    m, inv = vsplat(coef[M_ROW, cs]), vsplat(coef[INV_ROW, cs])
    a, g, b = vsplat(coef[A_ROW, cs]), vsplat(coef[G_ROW, cs]), vsplat(coef[B_ROW, cs])
    for i in range(S // 64):
        r = zo + i * 64
        d0, d1, d2, d3 = _dy_block(dp, pp, o, arg, n, C, c, i, W, zo, pos, one)
        vstore(dz, r, _dz(d0, vload(z, r), m, inv, a, g, b))
        vstore(dz, r + 16, _dz(d1, vload(z, r + 16), m, inv, a, g, b))
        vstore(dz, r + 32, _dz(d2, vload(z, r + 32), m, inv, a, g, b))
        vstore(dz, r + 48, _dz(d3, vload(z, r + 48), m, inv, a, g, b))


@njit(inline="always")
def _dy_block(dp, pp, o, arg, n, C, c, i, W, zo, pos, one):
    # block i of map (n, c): dp through ELU' routed to each window's winner, in memory order
    g = _elu_grad(vload(dp, zo // 4 + i * 16), vload(pp, _pooled_at(pp.shape[2], pp.shape[3], o, n, C, c, i, W)),
                  one, pos[0])
    e0, e1, e2, e3 = _routed(g, vload_i8(arg, zo // 4 + i * 16, pp), pos)
    return _memory(W, e0, e1, e2, e3)


@njit(inline="always")
def _backward_units(dp, pp, o, arg, z, coef, dz, W, G):
    # bn_unpool_backward_into per unit: G images at a time, block by block of 64 units, their
    # five coefficients in registers through the group's images (the operations of _backward_map
    # with each unit's own)
    N, C = arg.shape[0], arg.shape[1]
    S, E = W * W, coef.shape[1]
    pos = _positions(pp)
    one = vsplat(pp.dtype.type(1))
    for n0 in range(0, N, G):
        for c in range(C):
            for i in range(S // 64):
                u = c * S + i * 64
                m0, m1, m2, m3 = _load4(coef, u)
                i0, i1, i2, i3 = _load4(coef, INV_ROW * E + u)
                a0, a1, a2, a3 = _load4(coef, A_ROW * E + u)
                g0, g1, g2, g3 = _load4(coef, G_ROW * E + u)
                b0, b1, b2, b3 = _load4(coef, B_ROW * E + u)
                for n in range(n0, min(N, n0 + G)):
                    zo = (n * C + c) * S
                    r = zo + i * 64
                    d0, d1, d2, d3 = _dy_block(dp, pp, o, arg, n, C, c, i, W, zo, pos, one)
                    vstore(dz, r, _dz(d0, vload(z, r), m0, i0, a0, g0, b0))
                    vstore(dz, r + 16, _dz(d1, vload(z, r + 16), m1, i1, a1, g1, b1))
                    vstore(dz, r + 32, _dz(d2, vload(z, r + 32), m2, i2, a2, g2, b2))
                    vstore(dz, r + 48, _dz(d3, vload(z, r + 48), m3, i3, a3, g3, b3))


@njit(cache=True, nogil=True)
def bn_unpool_backward_into(dp, pp, o, arg, z, coef, dz, unit):
    # dp, pp, arg, z as in bn_unpool_sums_into, coef (6,C*W*W) with the batch's B and G rows, unit
    # as in bn_pool_elu_forward_into   ->   dz (N,C,W,W) = a * dy + (G * xhat + B), BN's input gradient
    N, C = arg.shape[0], arg.shape[1]
    if z.shape[3] == 32 and unit:    # each case in a loop of its own
        _backward_units(dp, pp, o, arg, z, coef, dz, 32, GROUP)
    elif z.shape[3] == 32:
        for n in range(N):
            for c in range(C):
                _backward_map(dp, pp, o, arg, z, coef, dz, n, c, 32)
    elif unit:
        _backward_units(dp, pp, o, arg, z, coef, dz, 16, GROUP)
    else:
        for n in range(N):
            for c in range(C):
                _backward_map(dp, pp, o, arg, z, coef, dz, n, c, 16)


# ---- checked wrappers (tests); the step calls the kernels above directly ---------------------

def _check(z, mean, pp, o):
    """z (N,C,W,W) with (W, o) in ((32, 0), (32, 2), (16, 0)), mean (D,) float64 with D = C or
    C*W*W, pp (N,C,W/2+2o,W/2+2o) -> D."""
    N, C, H, W = check_array("z", z, (None, None, None, None)).shape
    if (H, W, o) not in ((32, 32, 2), (32, 32, 0), (16, 16, 0)):
        raise ValueError(f"z has shape {z.shape} with o={o}: only 32x32 maps (o 0 or 2) or 16x16 maps (o 0)")
    if np.shape(mean) not in ((C,), (C * H * W,)):
        raise ValueError(f"mean has shape {np.shape(mean)}: need ({C},) per channel or ({C * H * W},) per unit")
    check_array("mean", mean, mean.shape, np.float64)
    check_array("pp", pp, (N, C, H // 2 + 2 * o, W // 2 + 2 * o), z.dtype)
    return mean.shape[0]


def _coef(z, mean, invstd, gamma, beta):
    D = mean.shape[0]
    check_array("invstd", invstd, (D,), np.float64)
    for name, a in (("gamma", gamma), ("beta", beta)):
        check_array(name, a, (D,), z.dtype)
    coef = np.zeros((6, z[0].size), z.dtype)                            # (6,C*W*W)
    bn_coef_forward_into(mean, invstd, gamma, beta, coef)
    return coef


def bn_pool_elu_forward(z, mean, invstd, gamma, beta, o=0):
    """ELU(maxpool2x2(gamma * (z - mean) * invstd + beta)) of one shard -> (pp (N,C,W/2+2o,W/2+2o)
    with a zero border, argmax int8 (N,C,W/2,W/2))."""
    N, C, H, W = z.shape
    pp = np.zeros((N, C, H // 2 + 2 * o, W // 2 + 2 * o), z.dtype)
    _check(z, mean, pp, o)
    arg = np.empty((N, C, H // 2, W // 2), np.int8)
    bn_pool_elu_forward_into(z, _coef(z, mean, invstd, gamma, beta), pp, o, arg, mean.shape[0] != C)
    return pp, arg


def _check_grad(dp, arg, z):
    check_array("arg", arg, (z.shape[0], z.shape[1], z.shape[2] // 2, z.shape[3] // 2), np.int8)
    check_array("dp", dp, arg.shape, z.dtype)


def bn_unpool_sums(dp, pp, o, arg, z, mean, invstd):
    """One shard's float64 [sum dy | sum dy*xhat] (2D,) from the pooled output's gradient dp."""
    D = _check(z, mean, pp, o)
    _check_grad(dp, arg, z)
    coef = _coef(z, mean, invstd, np.ones(D, z.dtype), np.zeros(D, z.dtype))
    out = np.empty(2 * D)                                               # (2D,) float64
    bn_unpool_sums_into(dp, pp, o, arg, z, coef, out)
    return out


def bn_unpool_backward(dp, pp, o, arg, z, mean, invstd, gamma, sums, count):
    """One shard's dz (N,C,W,W) from dp and the batch's float64 sums [sum dy | sum dy*xhat] (2D,)
    over `count` values per statistic."""
    D = _check(z, mean, pp, o)
    _check_grad(dp, arg, z)
    coef = _coef(z, mean, invstd, gamma, np.zeros(D, z.dtype))
    check_array("sums", sums, (2 * D,), np.float64)
    bn_coef_backward_into(invstd, gamma, sums, float(count), coef)
    dz = np.empty_like(z)
    bn_unpool_backward_into(dp, pp, o, arg, z, coef, dz, D != z.shape[1])
    return dz
