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
#   forward   z[n,f,y,:]  = sum_{c,ky,kx} w[f,c,ky,kx] * xp[n,c,y+ky,kx:kx+16]      4 maps x 1 row
#   input     dx[n,c,y,:] = sum_{f,a,b} w[f,c,4-a,4-b] * dzp[n,f,y+a,b:b+16]         6 maps x 1 row
#             (dzp = dz zero-padded by 2: the input gradient is the "full" correlation of dz
#             with the flipped filters)
#   weights   dw[:,c,ky,kx] = sum_{n,y,x} dz[n,:,y,x] * xp[n,c,y+ky,x+kx]           16 maps x 5 kx
#             (the 16 maps are the lanes: dz transposed to one vector per position first)
# One thread, float32, chunk of 8 images: forward 111 us (89 GFLOP/s) vs 192-237 us for im2col +
# OpenBLAS sgemm; input gradient 109 vs 218 us (sgemm + col2im); weight gradient 122 us (80
# GFLOP/s) vs 230 us (im2col + sgemm) and 178 us for a first kernel with x in the lanes (2 maps x
# 3 kx tiles, 55 GFLOP/s: two unaligned loads per FMA pair). The kernels run per micro-shard of images
# on the worker threads (nogil); every output element is summed in a fixed order, so the
# bits do not depend on threads. The tiles repeat one line per accumulator on purpose: each
# accumulator must be its own variable for LLVM to keep it in a register.

@njit(inline="always")
def conv16_image(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,20,20), w (F,C,5,5)   ->   z from flat offset zo
    # (F,16,16), no bias. F % 4 == 0.
    F, C = w.shape[0], w.shape[1]
    for fb in range(0, F, 4):
        for y in range(16):
            a0 = vzero(z)
            a1 = vzero(z)
            a2 = vzero(z)
            a3 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 20 + y + ky) * 20
                    for kx in range(5):
                        v = vload(xp, r + kx)
                        a0 = vfma(vsplat(w[fb, c, ky, kx]), v, a0)
                        a1 = vfma(vsplat(w[fb + 1, c, ky, kx]), v, a1)
                        a2 = vfma(vsplat(w[fb + 2, c, ky, kx]), v, a2)
                        a3 = vfma(vsplat(w[fb + 3, c, ky, kx]), v, a3)
            o = zo + (fb * 16 + y) * 16
            vstore(z, o, a0)
            vstore(z, o + 256, a1)
            vstore(z, o + 512, a2)
            vstore(z, o + 768, a3)


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
    # is written)   ->   dx (N,6,16,16) gradient w.r.t. the unpadded input
    N, F = dz.shape[0], dz.shape[1]
    for n in range(N):
        for f in range(F):
            for y in range(16):
                vstore(dzp, ((n * F + f) * 20 + y + 2) * 20 + 2, vload(dz, ((n * F + f) * 16 + y) * 16))
        for y in range(16):
            a0 = vzero(dx)
            a1 = vzero(dx)
            a2 = vzero(dx)
            a3 = vzero(dx)
            a4 = vzero(dx)
            a5 = vzero(dx)
            for f in range(F):
                for a in range(5):
                    r = ((n * F + f) * 20 + y + a) * 20
                    for b in range(5):
                        v = vload(dzp, r + b)
                        a0 = vfma(vsplat(w[f, 0, 4 - a, 4 - b]), v, a0)
                        a1 = vfma(vsplat(w[f, 1, 4 - a, 4 - b]), v, a1)
                        a2 = vfma(vsplat(w[f, 2, 4 - a, 4 - b]), v, a2)
                        a3 = vfma(vsplat(w[f, 3, 4 - a, 4 - b]), v, a3)
                        a4 = vfma(vsplat(w[f, 4, 4 - a, 4 - b]), v, a4)
                        a5 = vfma(vsplat(w[f, 5, 4 - a, 4 - b]), v, a5)
            o = (n * 6 * 16 + y) * 16
            vstore(dx, o, a0)
            vstore(dx, o + 256, a1)
            vstore(dx, o + 512, a2)
            vstore(dx, o + 768, a3)
            vstore(dx, o + 1024, a4)
            vstore(dx, o + 1280, a5)


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
    # The 16 maps are the lanes: dz is first transposed to one 16-map vector per position, then
    # each (c, ky) tile of 5 accumulators (kx = 0..4) gets, per position, one vector load and five
    # FMAs with a splatted input value. Each lane sums its positions in order (no lane sum).
    N, F = dz.shape[0], dz.shape[1]
    C = xp.shape[1]
    for n in range(N):
        for f in range(F):
            for p in range(256):
                dzt[n, p, f] = dz[n, f, p // 16, p % 16]
    for c in range(C):
        for ky in range(5):
            a0 = vzero(dz)
            a1 = vzero(dz)
            a2 = vzero(dz)
            a3 = vzero(dz)
            a4 = vzero(dz)
            for n in range(N):
                for y in range(16):
                    for x in range(16):
                        d = vload(dzt, (n * 256 + y * 16 + x) * 16)
                        a0 = vfma(d, vsplat(xp[n, c, y + ky, x]), a0)
                        a1 = vfma(d, vsplat(xp[n, c, y + ky, x + 1]), a1)
                        a2 = vfma(d, vsplat(xp[n, c, y + ky, x + 2]), a2)
                        a3 = vfma(d, vsplat(xp[n, c, y + ky, x + 3]), a3)
                        a4 = vfma(d, vsplat(xp[n, c, y + ky, x + 4]), a4)
            o = (c * 5 + ky) * 80
            vstore(dwt, o, a0)
            vstore(dwt, o + 16, a1)
            vstore(dwt, o + 32, a2)
            vstore(dwt, o + 48, a3)
            vstore(dwt, o + 64, a4)


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
