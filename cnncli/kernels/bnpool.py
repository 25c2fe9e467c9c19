"""Training-mode BN of the two conv layers fused with their 2x2 max pool + ELU, one shard at a time,
in 16-lane vectors: BN's output, xhat and dy are never stored. The entry points and the
per-channel loops; the per-unit loops are in bnunits.py. Not the coefficients (bncoef.py), the
statistics (bnstats.py), fc1's BN (no pooling there) nor the inference path (inference.py).
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

from .bnblock import _dy_block, _dz, _elu_grad, _map_setup, _pool_store, _pooled_at
from .bncoef import A_ROW, B_ROW, BETA_ROW, G_ROW, INV_ROW, M_ROW, bn_coef_backward_into, bn_coef_forward_into
from .bnunits import BACKWARD_GROUP, GROUP, backward_units, forward_units, unit_sums
from .checks import check_array
from .pool import _positions, _windows
from .simd import vadd, vfma, vhsum, vload, vmul, vsplat, vstore, vsub, vwiden, vzero
from .simdlanes import vload_i8, vsel_eq

# The per-map loops below index every array in place and call only helpers on vectors: an array
# handed to a helper inside a loop costs a reference count (an atomic) per call.


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


@njit(cache=True, nogil=True)
def bn_pool_elu_forward_into(z, coef, pp, o, arg, unit):
    # z (N,C,W,W) BN's input, coef (6,C*W*W), unit: BN per unit (else per channel: coef's values
    # repeat over each map)   ->   pp (N,C,W/2+2o,W/2+2o): interior = ELU(max of each 2x2 window
    # of BN's output y), border left as is (0 = ELU(0)); arg (N,C,W/2,W/2) int8 0..3 (ties -> the
    # first, as pool.py)
    N, C = arg.shape[0], arg.shape[1]
    if z.shape[3] == 32 and unit:    # each case in a loop of its own (as pool.py: a test per map is slower)
        forward_units(z, coef, pp, o, arg, 32, GROUP)
    elif z.shape[3] == 32:
        for n in range(N):
            for c in range(C):
                _forward_map(z, coef, pp, o, arg, n, c, 32)
    elif unit:
        forward_units(z, coef, pp, o, arg, 16, GROUP)
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
        unit_sums(dp, pp, o, arg, z, coef, out, 32, GROUP)
    elif per_unit:
        unit_sums(dp, pp, o, arg, z, coef, out, 16, GROUP)
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


@njit(cache=True, nogil=True)
def bn_unpool_backward_into(dp, pp, o, arg, z, coef, dz, unit):
    # dp, pp, arg, z as in bn_unpool_sums_into, coef (6,C*W*W) with the batch's B and G rows, unit
    # as in bn_pool_elu_forward_into   ->   dz (N,C,W,W) = a * dy + (G * xhat + B), BN's input gradient
    N, C = arg.shape[0], arg.shape[1]
    if z.shape[3] == 32 and unit:    # each case in a loop of its own
        backward_units(dp, pp, o, arg, z, coef, dz, 32, BACKWARD_GROUP)
    elif z.shape[3] == 32:
        for n in range(N):
            for c in range(C):
                _backward_map(dp, pp, o, arg, z, coef, dz, n, c, 32)
    elif unit:
        backward_units(dp, pp, o, arg, z, coef, dz, 16, BACKWARD_GROUP)
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
