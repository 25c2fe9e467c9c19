"""conv2's direct convolution (6 input maps of 16 x 16 -> 16 maps, 5x5, pad 2) in 16-lane vectors
(simd.py): forward, input gradient and weight gradient kernels, serial and releasing the GIL (a
training step runs them per micro-shard on the worker threads, shards.py). No bias in the kernels;
conv.py holds the generic layer these are checked against.

Shape legend: N images, C input maps (6), F output maps (16), 16 x 16 maps, 20 x 20 the
zero-padded input, 5 x 5 filters.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out
from .simd import vadd, vfma, vload, vsplat, vstore, vzero


# conv2 (C = 6 -> F = 16 maps of 16 x 16, K = 5): direct convolution in 16-lane vectors
# (cnncli.simd). One output row is one vector; each kernel keeps a tile of accumulator vectors
# in registers and adds one fused multiply-add (vfma) per (input row segment, weight):
#   forward   z[n,f,y,:]  = sum_{c,ky,kx} w[f,c,ky,kx] * xp[n,c,y+ky,kx:kx+16]      4 maps x 4 rows
#   input     dx[n,c,y,:] = sum_{f,a,b} w[f,c,4-a,4-b] * dzp[n,f,y+a,b:b+16]         6 maps x 4 rows
#             (dzp = dz zero-padded by 2: the input gradient is the "full" correlation of dz
#             with the flipped filters)
#   weights   dw[:,c,ky,kx] = sum_{n,y,x} dz[n,:,y,x] * xp[n,c,y+ky,x+kx]           2 c x 5 kx
#             (the 16 maps are the lanes: dz transposed to one vector per position first)
# The forward and input-gradient tiles splat each weight once and use it for 4 rows (16 or 24
# independent accumulators: enough FMAs in flight for two FMA units with 4-cycle latency, and one
# load per 4 or 6 FMAs); the weight gradient's splatted inputs slide along x, one new per map and
# position. Each output element still sums its terms in the order (c, ky, kx) / (f, a, b) /
# (n, y, x), so the tiling does not change a bit. The tiles repeat one line per accumulator on
# purpose: each accumulator must be its own variable for LLVM to keep it in a register.
# Timings per 8-image shard: `python scripts/bench_conv.py` (docs/performance.md).

@njit(inline="always")
def conv16_image(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,20,20), w (F,C,5,5)   ->   z from flat offset zo
    # (F,16,16), no bias. F % 4 == 0. Tile: maps fb..fb+3 (a0., a1., ...) x rows y..y+3 (a.0 ... a.3).
    F, C = w.shape[0], w.shape[1]
    for fb in range(0, F, 4):
        for y in range(0, 16, 4):
            a00 = vzero(z)
            a01 = vzero(z)
            a02 = vzero(z)
            a03 = vzero(z)
            a10 = vzero(z)
            a11 = vzero(z)
            a12 = vzero(z)
            a13 = vzero(z)
            a20 = vzero(z)
            a21 = vzero(z)
            a22 = vzero(z)
            a23 = vzero(z)
            a30 = vzero(z)
            a31 = vzero(z)
            a32 = vzero(z)
            a33 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 20 + y + ky) * 20
                    for kx in range(5):
                        w0 = vsplat(w[fb, c, ky, kx])
                        w1 = vsplat(w[fb + 1, c, ky, kx])
                        w2 = vsplat(w[fb + 2, c, ky, kx])
                        w3 = vsplat(w[fb + 3, c, ky, kx])
                        v = vload(xp, r + kx)
                        a00 = vfma(w0, v, a00)
                        a10 = vfma(w1, v, a10)
                        a20 = vfma(w2, v, a20)
                        a30 = vfma(w3, v, a30)
                        v = vload(xp, r + kx + 20)
                        a01 = vfma(w0, v, a01)
                        a11 = vfma(w1, v, a11)
                        a21 = vfma(w2, v, a21)
                        a31 = vfma(w3, v, a31)
                        v = vload(xp, r + kx + 40)
                        a02 = vfma(w0, v, a02)
                        a12 = vfma(w1, v, a12)
                        a22 = vfma(w2, v, a22)
                        a32 = vfma(w3, v, a32)
                        v = vload(xp, r + kx + 60)
                        a03 = vfma(w0, v, a03)
                        a13 = vfma(w1, v, a13)
                        a23 = vfma(w2, v, a23)
                        a33 = vfma(w3, v, a33)
            o = zo + (fb * 16 + y) * 16
            vstore(z, o, a00)
            vstore(z, o + 16, a01)
            vstore(z, o + 32, a02)
            vstore(z, o + 48, a03)
            vstore(z, o + 256, a10)
            vstore(z, o + 272, a11)
            vstore(z, o + 288, a12)
            vstore(z, o + 304, a13)
            vstore(z, o + 512, a20)
            vstore(z, o + 528, a21)
            vstore(z, o + 544, a22)
            vstore(z, o + 560, a23)
            vstore(z, o + 768, a30)
            vstore(z, o + 784, a31)
            vstore(z, o + 800, a32)
            vstore(z, o + 816, a33)


@njit(cache=True, nogil=True)
def conv16_forward_into(xp, w, z):
    # xp (N,C,20,20) padded input, w (F,C,5,5)   ->   z (N,F,16,16), no bias
    N, F = z.shape[0], z.shape[1]
    C = xp.shape[1]
    for n in range(N):
        conv16_image(xp, n * C * 400, w, z, n * F * 256)


@njit(cache=True, nogil=True)
def conv16_backward_dx_into(dz, w, dzp, dx):
    # dz (N,F,16,16), w (F,6,5,5), dzp (N,F,20,20) scratch with a zero border (only its interior
    # is written)   ->   dx (N,6,16,16) gradient w.r.t. the unpadded input.
    # Tile: input maps 0..5 (a0., ..., a5.) x rows y..y+3 (a.0 ... a.3).
    N, F = dz.shape[0], dz.shape[1]
    for n in range(N):
        for f in range(F):
            for y in range(16):
                vstore(dzp, ((n * F + f) * 20 + y + 2) * 20 + 2, vload(dz, ((n * F + f) * 16 + y) * 16))
        for y in range(0, 16, 4):
            a00 = vzero(dx)
            a01 = vzero(dx)
            a02 = vzero(dx)
            a03 = vzero(dx)
            a10 = vzero(dx)
            a11 = vzero(dx)
            a12 = vzero(dx)
            a13 = vzero(dx)
            a20 = vzero(dx)
            a21 = vzero(dx)
            a22 = vzero(dx)
            a23 = vzero(dx)
            a30 = vzero(dx)
            a31 = vzero(dx)
            a32 = vzero(dx)
            a33 = vzero(dx)
            a40 = vzero(dx)
            a41 = vzero(dx)
            a42 = vzero(dx)
            a43 = vzero(dx)
            a50 = vzero(dx)
            a51 = vzero(dx)
            a52 = vzero(dx)
            a53 = vzero(dx)
            for f in range(F):
                for a in range(5):
                    r = ((n * F + f) * 20 + y + a) * 20
                    for b in range(5):
                        w0 = vsplat(w[f, 0, 4 - a, 4 - b])
                        w1 = vsplat(w[f, 1, 4 - a, 4 - b])
                        w2 = vsplat(w[f, 2, 4 - a, 4 - b])
                        w3 = vsplat(w[f, 3, 4 - a, 4 - b])
                        w4 = vsplat(w[f, 4, 4 - a, 4 - b])
                        w5 = vsplat(w[f, 5, 4 - a, 4 - b])
                        v = vload(dzp, r + b)
                        a00 = vfma(w0, v, a00)
                        a10 = vfma(w1, v, a10)
                        a20 = vfma(w2, v, a20)
                        a30 = vfma(w3, v, a30)
                        a40 = vfma(w4, v, a40)
                        a50 = vfma(w5, v, a50)
                        v = vload(dzp, r + b + 20)
                        a01 = vfma(w0, v, a01)
                        a11 = vfma(w1, v, a11)
                        a21 = vfma(w2, v, a21)
                        a31 = vfma(w3, v, a31)
                        a41 = vfma(w4, v, a41)
                        a51 = vfma(w5, v, a51)
                        v = vload(dzp, r + b + 40)
                        a02 = vfma(w0, v, a02)
                        a12 = vfma(w1, v, a12)
                        a22 = vfma(w2, v, a22)
                        a32 = vfma(w3, v, a32)
                        a42 = vfma(w4, v, a42)
                        a52 = vfma(w5, v, a52)
                        v = vload(dzp, r + b + 60)
                        a03 = vfma(w0, v, a03)
                        a13 = vfma(w1, v, a13)
                        a23 = vfma(w2, v, a23)
                        a33 = vfma(w3, v, a33)
                        a43 = vfma(w4, v, a43)
                        a53 = vfma(w5, v, a53)
            o = (n * 6 * 16 + y) * 16
            vstore(dx, o, a00)
            vstore(dx, o + 16, a01)
            vstore(dx, o + 32, a02)
            vstore(dx, o + 48, a03)
            vstore(dx, o + 256, a10)
            vstore(dx, o + 272, a11)
            vstore(dx, o + 288, a12)
            vstore(dx, o + 304, a13)
            vstore(dx, o + 512, a20)
            vstore(dx, o + 528, a21)
            vstore(dx, o + 544, a22)
            vstore(dx, o + 560, a23)
            vstore(dx, o + 768, a30)
            vstore(dx, o + 784, a31)
            vstore(dx, o + 800, a32)
            vstore(dx, o + 816, a33)
            vstore(dx, o + 1024, a40)
            vstore(dx, o + 1040, a41)
            vstore(dx, o + 1056, a42)
            vstore(dx, o + 1072, a43)
            vstore(dx, o + 1280, a50)
            vstore(dx, o + 1296, a51)
            vstore(dx, o + 1312, a52)
            vstore(dx, o + 1328, a53)


@njit(cache=True, nogil=True)
def conv16_grads_finish_into(dwt, dzt, dw, db):
    # dwt (C,5,5,16) from conv16_backward_dw_into, dzt (N,256,16) its transposed dz   ->   dw (16,C,5,5)
    # = dwt with the map index first, db (16,) = per map the sum over (n, position) in order (16 lanes)
    C = dwt.shape[0]
    for c in range(C):
        for ky in range(5):
            for kx in range(5):
                for f in range(16):
                    dw[f, c, ky, kx] = dwt[c, ky, kx, f]
    acc = vzero(dzt)
    for q in range(dzt.shape[0] * 256):
        acc = vadd(acc, vload(dzt, q * 16))
    vstore(db, 0, acc)


@njit(cache=True, nogil=True)
def conv16_backward_dw_into(dz, xp, dzt, dwt):
    # dz (N,16,16,16), xp (N,C,20,20) padded input, dzt (N,256,16) scratch   ->   dwt (C,5,5,16)
    # overwritten: the weight gradient with the map index LAST (the caller transposes).
    # The 16 maps are the lanes: dz is first transposed to one 16-map vector per position. A tile
    # is input maps c and c + 1 (a., e.) x kx = 0..4 for one ky: per position one vector load and
    # ten FMAs with splatted input values, which slide along x (b0..b4 = xp[n,c,y+ky,x:x+5], one
    # new splat per map and position). Each lane sums its positions in order (no lane sum). An odd
    # C computes its last map twice (c + 1 clamped): the same sums, written twice.
    N, F = dz.shape[0], dz.shape[1]
    C = xp.shape[1]
    for n in range(N):
        for f in range(F):
            for p in range(256):
                dzt[n, p, f] = dz[n, f, p // 16, p % 16]
    for c in range(0, C, 2):
        c1 = min(c + 1, C - 1)
        for ky in range(5):
            a0 = vzero(dz)
            a1 = vzero(dz)
            a2 = vzero(dz)
            a3 = vzero(dz)
            a4 = vzero(dz)
            e0 = vzero(dz)
            e1 = vzero(dz)
            e2 = vzero(dz)
            e3 = vzero(dz)
            e4 = vzero(dz)
            for n in range(N):
                for y in range(16):
                    b0 = vsplat(xp[n, c, y + ky, 0])
                    b1 = vsplat(xp[n, c, y + ky, 1])
                    b2 = vsplat(xp[n, c, y + ky, 2])
                    b3 = vsplat(xp[n, c, y + ky, 3])
                    g0 = vsplat(xp[n, c1, y + ky, 0])
                    g1 = vsplat(xp[n, c1, y + ky, 1])
                    g2 = vsplat(xp[n, c1, y + ky, 2])
                    g3 = vsplat(xp[n, c1, y + ky, 3])
                    for x in range(16):
                        b4 = vsplat(xp[n, c, y + ky, x + 4])
                        g4 = vsplat(xp[n, c1, y + ky, x + 4])
                        d = vload(dzt, (n * 256 + y * 16 + x) * 16)
                        a0 = vfma(d, b0, a0)
                        a1 = vfma(d, b1, a1)
                        a2 = vfma(d, b2, a2)
                        a3 = vfma(d, b3, a3)
                        a4 = vfma(d, b4, a4)
                        e0 = vfma(d, g0, e0)
                        e1 = vfma(d, g1, e1)
                        e2 = vfma(d, g2, e2)
                        e3 = vfma(d, g3, e3)
                        e4 = vfma(d, g4, e4)
                        b0, b1, b2, b3 = b1, b2, b3, b4
                        g0, g1, g2, g3 = g1, g2, g3, g4
            o = (c * 5 + ky) * 80
            vstore(dwt, o, a0)
            vstore(dwt, o + 16, a1)
            vstore(dwt, o + 32, a2)
            vstore(dwt, o + 48, a3)
            vstore(dwt, o + 64, a4)
            o = (c1 * 5 + ky) * 80
            vstore(dwt, o, e0)
            vstore(dwt, o + 16, e1)
            vstore(dwt, o + 32, e2)
            vstore(dwt, o + 48, e3)
            vstore(dwt, o + 64, e4)


def _check_conv16(xp, w, C=None):
    N = check_array("xp", xp, (None, C, 20, 20)).shape[0]
    F = check_array("w", w, (None, xp.shape[1], 5, 5), xp.dtype).shape[0]
    if F % 4:
        raise ValueError(f"w has shape {w.shape}: the 16-wide kernels need a multiple of 4 filters")
    return N, F


def conv16_forward(xp, w, out=None):
    """conv2's forward: xp (N,C,20,20) zero-padded input, w (F,C,5,5) -> z (N,F,16,16), no bias."""
    N, F = _check_conv16(xp, w)
    out = check_out("out", out, (N, F, 16, 16), xp.dtype)
    conv16_forward_into(xp, w, out)
    return out


def conv16_backward(dz, xp, w, need_dx=True):
    """Gradients of conv16_forward: dz (N,16,16,16) -> (dx (N,6,16,16) or None, dw (16,C,5,5)).
    Written for conv2's 16 maps (the weight gradient's lanes) and 6 input maps (the input's)."""
    N, F = _check_conv16(xp, w, C=6 if need_dx else None)
    check_array("dz", dz, (N, F, 16, 16), xp.dtype)
    if F != 16:
        raise ValueError(f"w has shape {w.shape}: the weight-gradient kernel needs 16 filters (its lanes)")
    dwt = np.empty((xp.shape[1], 5, 5, 16), xp.dtype)
    conv16_backward_dw_into(dz, xp, np.empty((N, 256, 16), xp.dtype), dwt)
    dw = np.ascontiguousarray(dwt.transpose(3, 0, 1, 2))
    dx = None
    if need_dx:
        dx = np.empty((N, 6, 16, 16), xp.dtype)
        conv16_backward_dx_into(dz, w, np.zeros((N, F, 20, 20), xp.dtype), dx)
    return dx, dw
