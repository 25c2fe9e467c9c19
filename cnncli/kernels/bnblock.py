"""The 64-value block helpers of the fused BN + pool + ELU kernels (bnpool.py per channel, bnunits.py
per unit): the window/memory orders, dy through ELU' and the argmax, dz, the pooled offsets. Only
inline helpers on vectors; no loops over images or maps.
"""

# Shapes and the coefficient rows as in bnpool.py's legend. A block is 4 vectors of 16: 64 values
# of a map in memory order (two rows of 32, or four rows of 16), whose 16 windows' positions 0..3
# pool.py's _windows gives.

from __future__ import annotations

from numba import njit

from .activation import velu
from .pool import _positions, _window_max_v, _windows
from .simd import vadd, vfma, vload, vmul, vsplat, vstore, vsub
from .simdlanes import vload_i8, vsel_eq, vsel_gt, vstore_i8, vzip_hi, vzip_lo


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
def _pool_store(pp, o, arg, n, C, c, i, W, zo, pos, y0, y1, y2, y3):
    # block i of map (n, c): the ELU of its 16 windows' maxima into pp, their positions into arg
    p0, p1, p2, p3 = _windows(W, y0, y1, y2, y3)
    best, k = _window_max_v(p0, p1, p2, p3, pos)
    vstore(pp, _pooled_at(pp.shape[2], pp.shape[3], o, n, C, c, i, W), velu(best))
    vstore_i8(arg, zo // 4 + i * 16, k)


@njit(inline="always")
def _dz(d, zv, m, inv, a, g, b):
    # dz = a * dy + (G * xhat + B) of 16 values, xhat = (z - m) * inv
    return vfma(a, d, vfma(g, vmul(vsub(zv, m), inv), b))


@njit(inline="always")
def _dy_block(dp, pp, o, arg, n, C, c, i, W, zo, pos, one):
    # block i of map (n, c): dp through ELU' routed to each window's winner, in memory order
    g = _elu_grad(vload(dp, zo // 4 + i * 16), vload(pp, _pooled_at(pp.shape[2], pp.shape[3], o, n, C, c, i, W)),
                  one, pos[0])
    e0, e1, e2, e3 = _routed(g, vload_i8(arg, zo // 4 + i * 16, pp), pos)
    return _memory(W, e0, e1, e2, e3)


@njit(inline="always")
def _add_out(out, q, v, first):
    # out[q .. q+15] = v (the first group's sums) or out[q ..] + v (a later group's)
    vstore(out, q, v if first else vadd(vload(out, q), v))
