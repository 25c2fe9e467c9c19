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
#   forward   6 maps x half a row per tile (one load, six FMAs per weight position)
#   weights   one map x 5 kx per tile for each ky, both halves of a row into the same lanes;
#             the bias gradient is a lane sum too
# 64 images, one thread, float32: forward 245-251 us vs 644-652 for the wide-row kernel it
# replaced; weight gradient 457-474 us vs 821-842 (conv2d_backward_dw_into), and for 128 images
# 741-768 us image by image vs 968-1,113 us streaming the batch once per (map, ky).

@njit(inline="always")
def conv32_image(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,36,36), w (6,C,5,5)   ->   z from flat offset zo
    # (6,32,32), no bias
    C = w.shape[1]
    for y in range(32):
        for h in range(0, 32, 16):
            a0 = vzero(z)
            a1 = vzero(z)
            a2 = vzero(z)
            a3 = vzero(z)
            a4 = vzero(z)
            a5 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 36 + y + ky) * 36 + h
                    for kx in range(5):
                        v = vload(xp, r + kx)
                        a0 = vfma(vsplat(w[0, c, ky, kx]), v, a0)
                        a1 = vfma(vsplat(w[1, c, ky, kx]), v, a1)
                        a2 = vfma(vsplat(w[2, c, ky, kx]), v, a2)
                        a3 = vfma(vsplat(w[3, c, ky, kx]), v, a3)
                        a4 = vfma(vsplat(w[4, c, ky, kx]), v, a4)
                        a5 = vfma(vsplat(w[5, c, ky, kx]), v, a5)
            o = zo + y * 32 + h
            vstore(z, o, a0)
            vstore(z, o + 1024, a1)
            vstore(z, o + 2048, a2)
            vstore(z, o + 3072, a3)
            vstore(z, o + 4096, a4)
            vstore(z, o + 5120, a5)


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
    # Image by image: the five ky tiles reuse one image's rows from L1; the tile's partial sums
    # go back to `acc` between images (each lane still sums over n, y, half in order).
    N, F = dz.shape[0], dz.shape[1]
    for f in range(F):
        acc = np.zeros((5, 5, 16), dz.dtype)   # (ky, kx, lane) partial sums
        s = vzero(dz)
        for n in range(N):
            for ky in range(5):
                o = ky * 80
                a0 = vload(acc, o)
                a1 = vload(acc, o + 16)
                a2 = vload(acc, o + 32)
                a3 = vload(acc, o + 48)
                a4 = vload(acc, o + 64)
                for y in range(32):
                    for h in range(0, 32, 16):
                        d = vload(dz, ((n * F + f) * 32 + y) * 32 + h)
                        ox = (n * 36 + y + ky) * 36 + h
                        a0 = vfma(d, vload(xp, ox), a0)
                        a1 = vfma(d, vload(xp, ox + 1), a1)
                        a2 = vfma(d, vload(xp, ox + 2), a2)
                        a3 = vfma(d, vload(xp, ox + 3), a3)
                        a4 = vfma(d, vload(xp, ox + 4), a4)
                vstore(acc, o, a0)
                vstore(acc, o + 16, a1)
                vstore(acc, o + 32, a2)
                vstore(acc, o + 48, a3)
                vstore(acc, o + 64, a4)
            for y in range(32):
                for h in range(0, 32, 16):
                    s = vadd(s, vload(dz, ((n * F + f) * 32 + y) * 32 + h))
        for ky in range(5):
            for kx in range(5):
                dw[f, 0, ky, kx] = vhsum(vload(acc, (ky * 5 + kx) * 16))
        db[f] = vhsum(s)


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
