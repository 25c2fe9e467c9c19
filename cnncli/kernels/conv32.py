"""conv1's direct convolution (1 input map of 32 x 32 -> 6 maps, 5x5, pad 2) in 16-lane vectors
(simd.py): the forward kernel and the weight/bias gradient (conv1 is the input layer: no input
gradient). No bias in the forward (the fused pool+ELU or the BN path adds it); conv.py holds the
generic layer these are checked against.

Shape legend: N images, C input maps (1 in the network), F output maps (6), 32 x 32 maps,
36 x 36 the zero-padded input, 5 x 5 filters.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out
from .simd import vadd, vfma, vhsum, vload, vsplat, vstore, vzero


# conv1 (C = 1 -> F = 6 maps of 32 x 32): the same with two vectors per row.
#   forward   6 maps x 2 rows (both halves of each) per tile: 24 accumulators; each weight is
#             splatted once and used for 4 row halves (one load per 6 FMAs)
#   weights   3 maps x 5 kx per ky: the 5 shifted input vectors of a row half are loaded once
#             and used by the 3 maps (8 loads per 15 FMAs); the bias gradient is a lane sum too
# Each output element sums its terms in the same order as a one-map, one-half tile would, so the
# tiling does not change a bit. Timings: `python scripts/bench_conv.py` (docs/performance.md).

@njit(inline="always")
def conv32_image(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,36,36), w (6,C,5,5)   ->   z from flat offset zo
    # (6,32,32), no bias. Tile: maps 0..5 x row y (a.0, a.1: left and right half) and row y + 1
    # (b.0, b.1).
    C = w.shape[1]
    for y in range(0, 32, 2):
        a00 = vzero(z)
        a01 = vzero(z)
        a10 = vzero(z)
        a11 = vzero(z)
        a20 = vzero(z)
        a21 = vzero(z)
        a30 = vzero(z)
        a31 = vzero(z)
        a40 = vzero(z)
        a41 = vzero(z)
        a50 = vzero(z)
        a51 = vzero(z)
        b00 = vzero(z)
        b01 = vzero(z)
        b10 = vzero(z)
        b11 = vzero(z)
        b20 = vzero(z)
        b21 = vzero(z)
        b30 = vzero(z)
        b31 = vzero(z)
        b40 = vzero(z)
        b41 = vzero(z)
        b50 = vzero(z)
        b51 = vzero(z)
        for c in range(C):
            for ky in range(5):
                r = xo + (c * 36 + y + ky) * 36
                for kx in range(5):
                    w0 = vsplat(w[0, c, ky, kx])
                    w1 = vsplat(w[1, c, ky, kx])
                    w2 = vsplat(w[2, c, ky, kx])
                    w3 = vsplat(w[3, c, ky, kx])
                    w4 = vsplat(w[4, c, ky, kx])
                    w5 = vsplat(w[5, c, ky, kx])
                    v = vload(xp, r + kx)
                    a00 = vfma(w0, v, a00)
                    a10 = vfma(w1, v, a10)
                    a20 = vfma(w2, v, a20)
                    a30 = vfma(w3, v, a30)
                    a40 = vfma(w4, v, a40)
                    a50 = vfma(w5, v, a50)
                    v = vload(xp, r + kx + 16)
                    a01 = vfma(w0, v, a01)
                    a11 = vfma(w1, v, a11)
                    a21 = vfma(w2, v, a21)
                    a31 = vfma(w3, v, a31)
                    a41 = vfma(w4, v, a41)
                    a51 = vfma(w5, v, a51)
                    v = vload(xp, r + kx + 36)
                    b00 = vfma(w0, v, b00)
                    b10 = vfma(w1, v, b10)
                    b20 = vfma(w2, v, b20)
                    b30 = vfma(w3, v, b30)
                    b40 = vfma(w4, v, b40)
                    b50 = vfma(w5, v, b50)
                    v = vload(xp, r + kx + 52)
                    b01 = vfma(w0, v, b01)
                    b11 = vfma(w1, v, b11)
                    b21 = vfma(w2, v, b21)
                    b31 = vfma(w3, v, b31)
                    b41 = vfma(w4, v, b41)
                    b51 = vfma(w5, v, b51)
        o = zo + y * 32
        vstore(z, o, a00)
        vstore(z, o + 16, a01)
        vstore(z, o + 32, b00)
        vstore(z, o + 48, b01)
        vstore(z, o + 1024, a10)
        vstore(z, o + 1040, a11)
        vstore(z, o + 1056, b10)
        vstore(z, o + 1072, b11)
        vstore(z, o + 2048, a20)
        vstore(z, o + 2064, a21)
        vstore(z, o + 2080, b20)
        vstore(z, o + 2096, b21)
        vstore(z, o + 3072, a30)
        vstore(z, o + 3088, a31)
        vstore(z, o + 3104, b30)
        vstore(z, o + 3120, b31)
        vstore(z, o + 4096, a40)
        vstore(z, o + 4112, a41)
        vstore(z, o + 4128, b40)
        vstore(z, o + 4144, b41)
        vstore(z, o + 5120, a50)
        vstore(z, o + 5136, a51)
        vstore(z, o + 5152, b50)
        vstore(z, o + 5168, b51)


@njit(cache=True, nogil=True)
def pad2_into(x, xp):
    # x (N,C,H,W)   ->   xp (N,C,H+4,W+4)'s interior [2:H+2, 2:W+2] (the border is the caller's zeros)
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for y in range(H):
                for i in range(W):
                    xp[n, c, y + 2, i + 2] = x[n, c, y, i]


@njit(cache=True, nogil=True)
def conv32_forward_into(xp, w, z):
    # xp (N,C,36,36) padded input, w (6,C,5,5)   ->   z (N,6,32,32), no bias
    N, C = xp.shape[0], xp.shape[1]
    for n in range(N):
        conv32_image(xp, n * C * 1296, w, z, n * 6 * 1024)


@njit(cache=True, nogil=True)
def conv32_backward_dw_into(dz, xp, dw, db):
    # dz (N,F,32,32), xp (N,1,36,36) padded input   ->   dw (F,1,5,5), db (F,) overwritten
    # Maps f, f1, f2 (a., b., c.: f + 1 and f + 2 clamped to F - 1, so a last map may be computed
    # twice, to the same sums) x kx = 0..4, image by image: the five ky tiles reuse one image's
    # rows from L1; the tile's partial sums go back to `acc` between images (each lane still sums
    # over n, y, half in order).
    N, F = dz.shape[0], dz.shape[1]
    for f in range(0, F, 3):
        f1 = min(f + 1, F - 1)
        f2 = min(f + 2, F - 1)
        acc = np.zeros((3, 5, 5, 16), dz.dtype)   # (map in tile, ky, kx, lane) partial sums
        s0 = vzero(dz)
        s1 = vzero(dz)
        s2 = vzero(dz)
        for n in range(N):
            for ky in range(5):
                o = ky * 80
                a0 = vload(acc, o)
                a1 = vload(acc, o + 16)
                a2 = vload(acc, o + 32)
                a3 = vload(acc, o + 48)
                a4 = vload(acc, o + 64)
                b0 = vload(acc, o + 400)
                b1 = vload(acc, o + 416)
                b2 = vload(acc, o + 432)
                b3 = vload(acc, o + 448)
                b4 = vload(acc, o + 464)
                c0 = vload(acc, o + 800)
                c1 = vload(acc, o + 816)
                c2 = vload(acc, o + 832)
                c3 = vload(acc, o + 848)
                c4 = vload(acc, o + 864)
                for y in range(32):
                    for h in range(0, 32, 16):
                        ox = (n * 36 + y + ky) * 36 + h
                        x0 = vload(xp, ox)
                        x1 = vload(xp, ox + 1)
                        x2 = vload(xp, ox + 2)
                        x3 = vload(xp, ox + 3)
                        x4 = vload(xp, ox + 4)
                        d = vload(dz, ((n * F + f) * 32 + y) * 32 + h)
                        a0 = vfma(d, x0, a0)
                        a1 = vfma(d, x1, a1)
                        a2 = vfma(d, x2, a2)
                        a3 = vfma(d, x3, a3)
                        a4 = vfma(d, x4, a4)
                        d = vload(dz, ((n * F + f1) * 32 + y) * 32 + h)
                        b0 = vfma(d, x0, b0)
                        b1 = vfma(d, x1, b1)
                        b2 = vfma(d, x2, b2)
                        b3 = vfma(d, x3, b3)
                        b4 = vfma(d, x4, b4)
                        d = vload(dz, ((n * F + f2) * 32 + y) * 32 + h)
                        c0 = vfma(d, x0, c0)
                        c1 = vfma(d, x1, c1)
                        c2 = vfma(d, x2, c2)
                        c3 = vfma(d, x3, c3)
                        c4 = vfma(d, x4, c4)
                vstore(acc, o, a0)
                vstore(acc, o + 16, a1)
                vstore(acc, o + 32, a2)
                vstore(acc, o + 48, a3)
                vstore(acc, o + 64, a4)
                vstore(acc, o + 400, b0)
                vstore(acc, o + 416, b1)
                vstore(acc, o + 432, b2)
                vstore(acc, o + 448, b3)
                vstore(acc, o + 464, b4)
                vstore(acc, o + 800, c0)
                vstore(acc, o + 816, c1)
                vstore(acc, o + 832, c2)
                vstore(acc, o + 848, c3)
                vstore(acc, o + 864, c4)
            for y in range(32):
                for h in range(0, 32, 16):
                    s0 = vadd(s0, vload(dz, ((n * F + f) * 32 + y) * 32 + h))
                    s1 = vadd(s1, vload(dz, ((n * F + f1) * 32 + y) * 32 + h))
                    s2 = vadd(s2, vload(dz, ((n * F + f2) * 32 + y) * 32 + h))
        for ky in range(5):
            for kx in range(5):
                dw[f, 0, ky, kx] = vhsum(vload(acc, (ky * 5 + kx) * 16))
                dw[f1, 0, ky, kx] = vhsum(vload(acc, 400 + (ky * 5 + kx) * 16))
                dw[f2, 0, ky, kx] = vhsum(vload(acc, 800 + (ky * 5 + kx) * 16))
        db[f] = vhsum(s0)
        db[f1] = vhsum(s1)
        db[f2] = vhsum(s2)


def conv32_forward(xp, w, out=None):
    """conv1's forward: xp (N,C,36,36) zero-padded input, w (6,C,5,5) -> z (N,6,32,32), no bias."""
    N = check_array("xp", xp, (None, None, 36, 36)).shape[0]
    check_array("w", w, (6, xp.shape[1], 5, 5), xp.dtype)
    out = check_out("out", out, (N, 6, 32, 32), xp.dtype)
    conv32_forward_into(xp, w, out)
    return out


def conv32_backward_dw(dz, xp):
    """Weight and bias gradients of conv1 (one input map): dz (N,F,32,32), xp (N,1,36,36) -> (dw, db)."""
    N = check_array("xp", xp, (None, 1, 36, 36)).shape[0]
    F = check_array("dz", dz, (N, None, 32, 32), xp.dtype).shape[1]
    dw = np.empty((F, 1, 5, 5), xp.dtype)
    db = np.empty(F, xp.dtype)
    conv32_backward_dw_into(dz, xp, dw, db)
    return dw, db
