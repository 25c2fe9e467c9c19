"""Training-mode BN per unit fused with the 2x2 max pool + ELU: bnpool.py's loops for a coefficient
per position, block by block of 64 units through a few images at a time, in AVX-512's and AVX2's
register tiles (simd.WIDE). Not the entry points nor the per-channel loops (bnpool.py).
"""

# The operations and shapes of bnpool.py's legend, with each unit's own coefficients: a block's 64
# units (4 vectors per coefficient row) meet the same block of G images in turn, so the block's
# coefficients are read once per group rather than once per image.
#
# The images of a group are read side by side, one stream per image and array, and the hardware
# prefetchers follow about four such streams of each array, not a whole shard's (8 images: the
# backward then ran ~1.5x slower on arrays out of L2, scripts/bn_unit_group.py). GROUP also sets
# the sums' rounding (each group's images are added in the dtype), so it is the same for both tiles.
#
# AVX-512 (32 registers of 16 float32 lanes) keeps the block's coefficients in registers through
# the group: 12 vectors in the forward, 8 in the sums (+ 8 sums), 20 in the backward. On AVX2 a
# 16-lane vector takes two of 16 registers, and those tiles spill; its tiles read the coefficients
# from L1 at each use instead, and the sums take the block in two halves of 2 vectors (memory
# order, 4 sums in registers; dy is 0 off each window's winner there, which leaves the sums' bits
# while z is finite). Each unit's operations and their order are otherwise the same in both tiles:
# the same bits (tests/test_bnpool.py, test_wide_and_narrow_unit_tiles_give_the_same_bits).

from __future__ import annotations

from numba import njit

from .bnblock import _add_out, _dy_block, _dz, _elu_grad, _load4, _memory, _pool_store, _pooled_at
from .bncoef import A_ROW, B_ROW, BETA_ROW, G_ROW, INV_ROW
from .pool import _positions, _windows
from .simd import WIDE, vadd, vfma, vload, vmul, vsplat, vstore, vsub, vwiden
from .simdlanes import vload_i8, vsel_eq, vzip_hi, vzip_lo

GROUP = 4                      # images per group: the prefetchers' streams, and the sums' rounding
NARROW_BACKWARD_GROUP = 2      # AVX2's dz loop, which has no sums to round (scripts/bn_unit_group.py)


@njit(inline="always")
def forward_units_wide(z, coef, pp, o, arg, W, G):
    # per unit, AVX-512's tile: G images at a time, block by block of 64 units, the block's m, a,
    # beta in registers through the group's images (the operations of _forward_map with each unit's
    # own values)
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


@njit(inline="always")
def unit_sums_wide(dp, pp, o, arg, z, coef, out, W, G):
    # bn_unpool_sums_into per unit, AVX-512's tile: G images at a time, block by block of 64 units,
    # each unit's dy and dy*xhat over the group's images (in order) added in the dtype, in registers;
    # each group's sums then go into out in float64 (stored by the first group, added by the next).
    # The sums stay in window order (position k of the 16 windows) and each image adds its winners
    # only, a masked add per position: dy is 0 at the other three, and adding that 0 (or 0 * xhat,
    # xhat finite) would leave the same bits (a sum from +0 never holds -0); memory order in out
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
def backward_units_wide(dp, pp, o, arg, z, coef, dz, W, G):
    # bn_unpool_backward_into per unit, AVX-512's tile: G images at a time, block by block of 64
    # units, their five coefficients in registers through the group's images (the operations of
    # _backward_map with each unit's own)
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


@njit(inline="always")
def forward_units_narrow(z, coef, pp, o, arg, W, G):
    # forward_units_wide in AVX2's tile: m, a, beta read at each use
    N, C = arg.shape[0], arg.shape[1]
    S, E = W * W, coef.shape[1]
    pos = _positions(pp)
    for n0 in range(0, N, G):
        for c in range(C):
            for i in range(S // 64):
                u = c * S + i * 64
                for n in range(n0, min(N, n0 + G)):
                    zo = (n * C + c) * S
                    r = zo + i * 64
                    y0, y1 = _y(z, coef, r, u, E), _y(z, coef, r + 16, u + 16, E)
                    y2, y3 = _y(z, coef, r + 32, u + 32, E), _y(z, coef, r + 48, u + 48, E)
                    _pool_store(pp, o, arg, n, C, c, i, W, zo, pos, y0, y1, y2, y3)


@njit(inline="always")
def _y(z, coef, r, q, E):
    # y = (z - m) * a + beta of z[r .. r+15], units q .. q+15's coefficients read here
    return vfma(vsub(vload(z, r), vload(coef, q)), vload(coef, A_ROW * E + q), vload(coef, BETA_ROW * E + q))


@njit(inline="always")
def unit_sums_narrow(dp, pp, o, arg, z, coef, out, W, G):
    # unit_sums_wide in AVX2's tile: each block in two halves, positions 0, 1 of its windows and
    # then 2, 3 (memory vectors 0, 1 and 2, 3 at W = 32; 0, 2 and 1, 3 at W = 16); in a half, each
    # image's dy in memory order (0 off the winner: the same bits, unit_sums_wide's note) added to
    # the half's sums, m and inv read at each use (dp, pp and arg are read, and dy routed, once per
    # half: the price of holding 4 sums rather than 8)
    N, C = arg.shape[0], arg.shape[1]
    pos = _positions(pp)
    one = vsplat(pp.dtype.type(1))
    for n0 in range(0, N, G):
        for c in range(C):
            for i in range(W * W // 64):
                _half_sums(dp, pp, o, arg, z, coef, out, W, n0, min(N, n0 + G), c, i, 0, pos, one)
                _half_sums(dp, pp, o, arg, z, coef, out, W, n0, min(N, n0 + G), c, i, 1, pos, one)


@njit(inline="always")
def _half_sums(dp, pp, o, arg, z, coef, out, W, n0, n1, c, i, h, pos, one):
    # half h of block i of map c in unit_sums_narrow, images n0 .. n1-1
    C, S, E = arg.shape[1], W * W, coef.shape[1]
    zero = pos[0]
    ka = 2 * h if W == 32 else h                  # the half's memory vectors
    kb = ka + 1 if W == 32 else h + 2
    ua, ub = c * S + i * 64 + 16 * ka, c * S + i * 64 + 16 * kb
    sa = sb = xa = xb = zero
    for n in range(n0, n1):
        zo = (n * C + c) * S
        g = _elu_grad(vload(dp, zo // 4 + i * 16), vload(pp, _pooled_at(pp.shape[2], pp.shape[3], o, n, C, c, i, W)),
                      one, zero)
        kv = vload_i8(arg, zo // 4 + i * 16, pp)
        e0, e1 = vsel_eq(kv, pos[2 * h], g, zero), vsel_eq(kv, pos[2 * h + 1], g, zero)
        da, db = vzip_lo(e0, e1), vzip_hi(e0, e1)
        r = zo + i * 64
        sa, sb = vadd(sa, da), vadd(sb, db)
        xa = vadd(xa, vmul(da, vmul(vsub(vload(z, r + 16 * ka), vload(coef, ua)), vload(coef, INV_ROW * E + ua))))
        xb = vadd(xb, vmul(db, vmul(vsub(vload(z, r + 16 * kb), vload(coef, ub)), vload(coef, INV_ROW * E + ub))))
    _add_out(out, ua, vwiden(sa), n0 == 0)
    _add_out(out, ub, vwiden(sb), n0 == 0)
    _add_out(out, E + ua, vwiden(xa), n0 == 0)
    _add_out(out, E + ub, vwiden(xb), n0 == 0)


@njit(inline="always")
def backward_units_narrow(dp, pp, o, arg, z, coef, dz, W, G):
    # backward_units_wide in AVX2's tile: the five coefficients read at each use
    N, C = arg.shape[0], arg.shape[1]
    S, E = W * W, coef.shape[1]
    pos = _positions(pp)
    one = vsplat(pp.dtype.type(1))
    for n0 in range(0, N, G):
        for c in range(C):
            for i in range(S // 64):
                for n in range(n0, min(N, n0 + G)):
                    zo = (n * C + c) * S
                    d = _dy_block(dp, pp, o, arg, n, C, c, i, W, zo, pos, one)
                    for k in range(4):
                        _dz_stored(z, coef, dz, zo + i * 64 + 16 * k, c * S + i * 64 + 16 * k, E, d[k])


@njit(inline="always")
def _dz_stored(z, coef, dz, r, q, E, d):
    # dz[r .. r+15] from dy d, z[r ..] and units q .. q+15's coefficients, read here
    vstore(dz, r, _dz(d, vload(z, r), vload(coef, q), vload(coef, INV_ROW * E + q), vload(coef, A_ROW * E + q),
                      vload(coef, G_ROW * E + q), vload(coef, B_ROW * E + q)))


# the network's tiles (numba reads these names when it compiles a caller)
forward_units = forward_units_wide if WIDE else forward_units_narrow
unit_sums = unit_sums_wide if WIDE else unit_sums_narrow
backward_units = backward_units_wide if WIDE else backward_units_narrow
BACKWARD_GROUP = GROUP if WIDE else NARROW_BACKWARD_GROUP
