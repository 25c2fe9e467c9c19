"""conv1's direct convolution (1 map of 32 x 32 -> 6 maps, 5x5, pad 2) in 16-lane vectors: the forward
and the weight/bias gradient (the input layer: no input gradient). No bias in the forward; conv.py
holds the generic layer these are checked against.
"""

# Shape legend: N images, C input maps (1 in the network), F output maps (6), 32 x 32 maps,
# 36 x 36 the zero-padded input, 5 x 5 filters.

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out
from .conv16 import fma4, fma6, store4
from .simd import WIDE, vadd, vfma, vhsum, vload, vsplat, vstore, vzero


# conv1 (C = 1 -> F = 6 maps of 32 x 32): the same with two vectors per row.
#   forward   6 maps x 2 rows (both halves of each) per tile: 24 accumulators; each weight is
#             splatted once and used for 4 row halves (one load per 6 FMAs)
#   weights   3 maps x 5 kx per ky: the 5 shifted input vectors of a row half are loaded once
#             and used by the 3 maps (8 loads per 15 FMAs); the bias gradient is a lane sum too
# Those tiles fit AVX-512's 32 registers; on AVX2 (simd.WIDE False: a 16-lane vector is two of its
# 16) they spill, so there the forward tile is 6 maps x one half row, each weight splatted for
# its one FMA, and the weight gradient takes one map at a time (3x faster each on the AVX2 VM of
# docs/performance.md).
# Each output element sums its terms in the same order as a one-map, one-half tile would, so no
# tiling changes a bit (tests/test_kernels.py runs both). Timings: `python scripts/bench_conv.py` (docs/performance.md).

@njit(inline="always")
def conv32_image_wide(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,36,36), w (6,C,5,5)   ->   z from flat offset zo
    # (6,32,32), no bias. Tile: maps 0..5 x row y (a.0, a.1: left and right half) and row y + 1
    # (b.0, b.1).
    C = w.shape[1]
    for y in range(0, 32, 2):
        a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = a40 = a41 = a50 = a51 = vzero(z)
        b00 = b01 = b10 = b11 = b20 = b21 = b30 = b31 = b40 = b41 = b50 = b51 = vzero(z)
        for c in range(C):
            for ky in range(5):
                r = xo + (c * 36 + y + ky) * 36
                for kx in range(5):
                    w0, w1, w2 = vsplat(w[0, c, ky, kx]), vsplat(w[1, c, ky, kx]), vsplat(w[2, c, ky, kx])
                    w3, w4, w5 = vsplat(w[3, c, ky, kx]), vsplat(w[4, c, ky, kx]), vsplat(w[5, c, ky, kx])
                    a00, a10, a20, a30, a40, a50 = fma6(w0, w1, w2, w3, w4, w5, vload(xp, r + kx),
                                                        a00, a10, a20, a30, a40, a50)
                    a01, a11, a21, a31, a41, a51 = fma6(w0, w1, w2, w3, w4, w5, vload(xp, r + kx + 16),
                                                        a01, a11, a21, a31, a41, a51)
                    b00, b10, b20, b30, b40, b50 = fma6(w0, w1, w2, w3, w4, w5, vload(xp, r + kx + 36),
                                                        b00, b10, b20, b30, b40, b50)
                    b01, b11, b21, b31, b41, b51 = fma6(w0, w1, w2, w3, w4, w5, vload(xp, r + kx + 52),
                                                        b01, b11, b21, b31, b41, b51)
        o = zo + y * 32
        store4(z, o, 16, a00, a01, b00, b01)
        store4(z, o + 1024, 16, a10, a11, b10, b11)
        store4(z, o + 2048, 16, a20, a21, b20, b21)
        store4(z, o + 3072, 16, a30, a31, b30, b31)
        store4(z, o + 4096, 16, a40, a41, b40, b41)
        store4(z, o + 5120, 16, a50, a51, b50, b51)


@njit(inline="always")
def conv32_image_narrow(xp, xo, w, z, zo):
    # conv32_image_wide with a tile of maps 0..5 (a0 ... a5) x one half row (h), each weight splatted
    # afresh for its one FMA (splatted once for the tile, the 6 splats spill on AVX2): AVX2's
    C = w.shape[1]
    for y in range(32):
        for h in range(0, 32, 16):
            a0 = a1 = a2 = a3 = a4 = a5 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 36 + y + ky) * 36 + h
                    for kx in range(5):
                        v = vload(xp, r + kx)
                        a0, a1 = vfma(vsplat(w[0, c, ky, kx]), v, a0), vfma(vsplat(w[1, c, ky, kx]), v, a1)
                        a2, a3 = vfma(vsplat(w[2, c, ky, kx]), v, a2), vfma(vsplat(w[3, c, ky, kx]), v, a3)
                        a4, a5 = vfma(vsplat(w[4, c, ky, kx]), v, a4), vfma(vsplat(w[5, c, ky, kx]), v, a5)
            o = zo + y * 32 + h
            store4(z, o, 1024, a0, a1, a2, a3)
            vstore(z, o + 4096, a4)
            vstore(z, o + 5120, a5)


conv32_image = conv32_image_wide if WIDE else conv32_image_narrow   # (numba reads it when it compiles a caller)


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


@njit(inline="always")
def load5(acc, o):
    # five consecutive vectors of acc from flat offset o (a tile's kx = 0..4 partial sums)
    return vload(acc, o), vload(acc, o + 16), vload(acc, o + 32), vload(acc, o + 48), vload(acc, o + 64)


@njit(cache=True, nogil=True)
def conv32_backward_dw_into(dz, xp, dw, db):
    # dz (N,F,32,32), xp (N,1,36,36) padded input   ->   dw (F,1,5,5), db (F,) overwritten
    dw_maps(dz, xp, dw, db)


@njit(inline="always")
def dw_maps_wide(dz, xp, dw, db):
    # Maps f, f1, f2 (a., b., c.: f + 1 and f + 2 clamped to F - 1, so a last map may be computed
    # twice, to the same sums) x kx = 0..4, image by image: the five ky tiles reuse one image's
    # rows from L1; the tile's partial sums go back to `acc` between images (each lane still sums
    # over n, y, half in order).
    N, F = dz.shape[0], dz.shape[1]
    for f in range(0, F, 3):
        f1 = min(f + 1, F - 1)
        f2 = min(f + 2, F - 1)
        acc = np.zeros((3, 5, 5, 16), dz.dtype)   # (map in tile, ky, kx, lane) partial sums
        s0 = s1 = s2 = vzero(dz)
        for n in range(N):
            for ky in range(5):
                o = ky * 80
                a0, a1, a2, a3, a4 = load5(acc, o)
                b0, b1, b2, b3, b4 = load5(acc, o + 400)
                c0, c1, c2, c3, c4 = load5(acc, o + 800)
                for y in range(32):
                    for h in range(0, 32, 16):
                        ox = (n * 36 + y + ky) * 36 + h
                        x0, x1, x2, x3, x4 = vload(xp, ox), vload(xp, ox + 1), vload(xp, ox + 2), vload(xp, ox + 3), \
                            vload(xp, ox + 4)
                        d = vload(dz, ((n * F + f) * 32 + y) * 32 + h)
                        a0, a1, a2, a3 = fma4(x0, x1, x2, x3, d, a0, a1, a2, a3)
                        a4 = vfma(x4, d, a4)
                        d = vload(dz, ((n * F + f1) * 32 + y) * 32 + h)
                        b0, b1, b2, b3 = fma4(x0, x1, x2, x3, d, b0, b1, b2, b3)
                        b4 = vfma(x4, d, b4)
                        d = vload(dz, ((n * F + f2) * 32 + y) * 32 + h)
                        c0, c1, c2, c3 = fma4(x0, x1, x2, x3, d, c0, c1, c2, c3)
                        c4 = vfma(x4, d, c4)
                store4(acc, o, 16, a0, a1, a2, a3)
                vstore(acc, o + 64, a4)
                store4(acc, o + 400, 16, b0, b1, b2, b3)
                vstore(acc, o + 464, b4)
                store4(acc, o + 800, 16, c0, c1, c2, c3)
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


@njit(inline="always")
def dw_maps_narrow(dz, xp, dw, db):
    # dw_maps_wide one map at a time (a tile of kx = 0..4 for one ky): AVX2's
    N, F = dz.shape[0], dz.shape[1]
    for f in range(F):
        acc = np.zeros((5, 5, 16), dz.dtype)   # (ky, kx, lane) partial sums
        s0 = vzero(dz)
        for n in range(N):
            for ky in range(5):
                o = ky * 80
                a0, a1, a2, a3, a4 = load5(acc, o)
                for y in range(32):
                    for h in range(0, 32, 16):
                        ox = (n * 36 + y + ky) * 36 + h
                        d = vload(dz, ((n * F + f) * 32 + y) * 32 + h)
                        a0, a1 = vfma(vload(xp, ox), d, a0), vfma(vload(xp, ox + 1), d, a1)
                        a2, a3 = vfma(vload(xp, ox + 2), d, a2), vfma(vload(xp, ox + 3), d, a3)
                        a4 = vfma(vload(xp, ox + 4), d, a4)
                store4(acc, o, 16, a0, a1, a2, a3)
                vstore(acc, o + 64, a4)
            for y in range(32):
                for h in range(0, 32, 16):
                    s0 = vadd(s0, vload(dz, ((n * F + f) * 32 + y) * 32 + h))
        for ky in range(5):
            for kx in range(5):
                dw[f, 0, ky, kx] = vhsum(vload(acc, (ky * 5 + kx) * 16))
        db[f] = vhsum(s0)


dw_maps = dw_maps_wide if WIDE else dw_maps_narrow


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
