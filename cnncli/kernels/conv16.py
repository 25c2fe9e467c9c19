"""conv2's direct convolution (6 maps of 16 x 16 -> 16 maps, 5x5, pad 2) in 16-lane vectors: forward,
input and weight gradients, serial and nogil (run per micro-shard on the worker threads). No bias in
the kernels; conv.py holds the generic layer these are checked against.
"""

# Shape legend: N images, C input maps (6), F output maps (16), 16 x 16 maps, 20 x 20 the
# zero-padded input, 5 x 5 filters.

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out
from .simd import WIDE, vadd, vfma, vload, vsplat, vstore, vzero
from .simdlanes import vzip_hi, vzip_lo


# conv2 (C = 6 -> F = 16 maps of 16 x 16, K = 5): direct convolution in 16-lane vectors
# (simd.py). One output row is one vector; each kernel keeps a tile of accumulator vectors
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
# position. Those tiles fit AVX-512's 32 registers. On AVX2 (simd.WIDE False) a 16-lane vector
# takes two of its 16 registers and they spill, so there the tiles are one row high (forward:
# 4 maps x 1 row, input gradient: 6 maps x 1 row) and the weight gradient takes one input map at
# a time, each input value splatted for each of its FMAs: 2.7x, 3.4x and 3x faster on the AVX2
# VM of docs/performance.md. Each output element
# still sums its terms in the order (c, ky, kx) / (f, a, b) / (n, y, x), so no tiling changes a
# bit (tests/test_kernels.py runs both). Each accumulator is its own variable (fma4, fma6 and
# store4 take and return them one by one) for LLVM to keep it in a register.
# Timings per 8-image shard: `python scripts/bench_conv.py` (docs/performance.md).

@njit(inline="always")
def fma4(w0, w1, w2, w3, v, a0, a1, a2, a3):
    # the tile's four accumulators that share the input vector v, each + its splatted weight * v
    return vfma(w0, v, a0), vfma(w1, v, a1), vfma(w2, v, a2), vfma(w3, v, a3)


@njit(inline="always")
def fma6(w0, w1, w2, w3, w4, w5, v, a0, a1, a2, a3, a4, a5):
    # the same for six accumulators
    return vfma(w0, v, a0), vfma(w1, v, a1), vfma(w2, v, a2), vfma(w3, v, a3), vfma(w4, v, a4), vfma(w5, v, a5)


@njit(inline="always")
def splat4(w, f, c, ky, kx):
    # w[f..f+3, c, ky, kx], each splatted: a forward tile's four maps' weights
    return vsplat(w[f, c, ky, kx]), vsplat(w[f + 1, c, ky, kx]), vsplat(w[f + 2, c, ky, kx]), vsplat(w[f + 3, c, ky, kx])


@njit(inline="always")
def splat6_flipped(w, f, a, b):
    # w[f, 0..5, 4-a, 4-b], each splatted: an input-gradient tile's six input maps' weights
    return (vsplat(w[f, 0, 4 - a, 4 - b]), vsplat(w[f, 1, 4 - a, 4 - b]), vsplat(w[f, 2, 4 - a, 4 - b]),
            vsplat(w[f, 3, 4 - a, 4 - b]), vsplat(w[f, 4, 4 - a, 4 - b]), vsplat(w[f, 5, 4 - a, 4 - b]))


@njit(inline="always")
def store4(z, o, step, a0, a1, a2, a3):
    # z[flat o + k*step : + 16] = a_k, k = 0..3
    vstore(z, o, a0)
    vstore(z, o + step, a1)
    vstore(z, o + 2 * step, a2)
    vstore(z, o + 3 * step, a3)


@njit(inline="always")
def conv16_image_wide(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,20,20), w (F,C,5,5)   ->   z from flat offset zo
    # (F,16,16), no bias. F % 4 == 0. Tile: maps fb..fb+3 (a0., a1., ...) x rows y..y+3 (a.0 ... a.3).
    F, C = w.shape[0], w.shape[1]
    for fb in range(0, F, 4):
        for y in range(0, 16, 4):
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = vzero(z)
            a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 20 + y + ky) * 20
                    for kx in range(5):
                        w0, w1, w2, w3 = splat4(w, fb, c, ky, kx)
                        a00, a10, a20, a30 = fma4(w0, w1, w2, w3, vload(xp, r + kx), a00, a10, a20, a30)
                        a01, a11, a21, a31 = fma4(w0, w1, w2, w3, vload(xp, r + kx + 20), a01, a11, a21, a31)
                        a02, a12, a22, a32 = fma4(w0, w1, w2, w3, vload(xp, r + kx + 40), a02, a12, a22, a32)
                        a03, a13, a23, a33 = fma4(w0, w1, w2, w3, vload(xp, r + kx + 60), a03, a13, a23, a33)
            o = zo + (fb * 16 + y) * 16
            store4(z, o, 16, a00, a01, a02, a03)
            store4(z, o + 256, 16, a10, a11, a12, a13)
            store4(z, o + 512, 16, a20, a21, a22, a23)
            store4(z, o + 768, 16, a30, a31, a32, a33)


@njit(inline="always")
def conv16_image_narrow(xp, xo, w, z, zo):
    # conv16_image_wide with a tile of maps fb..fb+3 (a0 ... a3) x one row y: AVX2's
    F, C = w.shape[0], w.shape[1]
    for fb in range(0, F, 4):
        for y in range(16):
            a0 = a1 = a2 = a3 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 20 + y + ky) * 20
                    for kx in range(5):
                        w0, w1, w2, w3 = splat4(w, fb, c, ky, kx)
                        a0, a1, a2, a3 = fma4(w0, w1, w2, w3, vload(xp, r + kx), a0, a1, a2, a3)
            store4(z, zo + (fb * 16 + y) * 16, 256, a0, a1, a2, a3)


conv16_image = conv16_image_wide if WIDE else conv16_image_narrow   # (numba reads it when it compiles a caller)


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
    N, F = dz.shape[0], dz.shape[1]
    for n in range(N):
        for f in range(F):
            for y in range(16):
                vstore(dzp, ((n * F + f) * 20 + y + 2) * 20 + 2, vload(dz, ((n * F + f) * 16 + y) * 16))
        dx_image(dzp, n, w, dx)


@njit(inline="always")
def dx_image_wide(dzp, n, w, dx):
    # image n: dzp (N,F,20,20) padded dz, w (F,6,5,5)   ->   dx[n] (6,16,16).
    # Tile: input maps 0..5 (a0., ..., a5.) x rows y..y+3 (a.0 ... a.3).
    F = w.shape[0]
    for y in range(0, 16, 4):
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = vzero(dx)
        a30 = a31 = a32 = a33 = a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = vzero(dx)
        for f in range(F):
            for a in range(5):
                r = ((n * F + f) * 20 + y + a) * 20
                for b in range(5):
                    w0, w1, w2, w3, w4, w5 = splat6_flipped(w, f, a, b)
                    a00, a10, a20, a30, a40, a50 = fma6(w0, w1, w2, w3, w4, w5, vload(dzp, r + b),
                                                        a00, a10, a20, a30, a40, a50)
                    a01, a11, a21, a31, a41, a51 = fma6(w0, w1, w2, w3, w4, w5, vload(dzp, r + b + 20),
                                                        a01, a11, a21, a31, a41, a51)
                    a02, a12, a22, a32, a42, a52 = fma6(w0, w1, w2, w3, w4, w5, vload(dzp, r + b + 40),
                                                        a02, a12, a22, a32, a42, a52)
                    a03, a13, a23, a33, a43, a53 = fma6(w0, w1, w2, w3, w4, w5, vload(dzp, r + b + 60),
                                                        a03, a13, a23, a33, a43, a53)
        o = (n * 6 * 16 + y) * 16
        store4(dx, o, 16, a00, a01, a02, a03)
        store4(dx, o + 256, 16, a10, a11, a12, a13)
        store4(dx, o + 512, 16, a20, a21, a22, a23)
        store4(dx, o + 768, 16, a30, a31, a32, a33)
        store4(dx, o + 1024, 16, a40, a41, a42, a43)
        store4(dx, o + 1280, 16, a50, a51, a52, a53)


@njit(inline="always")
def dx_image_narrow(dzp, n, w, dx):
    # dx_image_wide with a tile of input maps 0..5 (a0 ... a5) x one row y: AVX2's
    F = w.shape[0]
    for y in range(16):
        a0 = a1 = a2 = a3 = a4 = a5 = vzero(dx)
        for f in range(F):
            for a in range(5):
                r = ((n * F + f) * 20 + y + a) * 20
                for b in range(5):
                    w0, w1, w2, w3, w4, w5 = splat6_flipped(w, f, a, b)
                    a0, a1, a2, a3, a4, a5 = fma6(w0, w1, w2, w3, w4, w5, vload(dzp, r + b), a0, a1, a2, a3, a4, a5)
        o = (n * 6 * 16 + y) * 16
        store4(dx, o, 256, a0, a1, a2, a3)
        vstore(dx, o + 1024, a4)
        vstore(dx, o + 1280, a5)


dx_image = dx_image_wide if WIDE else dx_image_narrow


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


@njit(inline="always")
def _zip_round(t):
    # rows i and i + 8 of a 16 x 16 block interleaved into rows 2i, 2i + 1: the bits of (row, column)
    # rotate left by one, so four rounds transpose the block
    return (vzip_lo(t[0], t[8]), vzip_hi(t[0], t[8]), vzip_lo(t[1], t[9]), vzip_hi(t[1], t[9]),
            vzip_lo(t[2], t[10]), vzip_hi(t[2], t[10]), vzip_lo(t[3], t[11]), vzip_hi(t[3], t[11]),
            vzip_lo(t[4], t[12]), vzip_hi(t[4], t[12]), vzip_lo(t[5], t[13]), vzip_hi(t[5], t[13]),
            vzip_lo(t[6], t[14]), vzip_hi(t[6], t[14]), vzip_lo(t[7], t[15]), vzip_hi(t[7], t[15]))


@njit(inline="always")
def _transpose_rows(dz, dzt, n, y):
    # dz (N,16,16,16) row y of image n's 16 maps   ->   dzt[n, 16y : 16y + 16] (16 positions x 16 maps)
    r = (n * 256 + y) * 16
    t = (vload(dz, r), vload(dz, r + 256), vload(dz, r + 512), vload(dz, r + 768),
         vload(dz, r + 1024), vload(dz, r + 1280), vload(dz, r + 1536), vload(dz, r + 1792),
         vload(dz, r + 2048), vload(dz, r + 2304), vload(dz, r + 2560), vload(dz, r + 2816),
         vload(dz, r + 3072), vload(dz, r + 3328), vload(dz, r + 3584), vload(dz, r + 3840))
    t = _zip_round(_zip_round(_zip_round(_zip_round(t))))
    for x, v in enumerate(t):
        vstore(dzt, (n * 256 + y * 16 + x) * 16, v)


@njit(cache=True, nogil=True)
def conv16_backward_dw_into(dz, xp, dzt, dwt):
    # dz (N,16,16,16), xp (N,C,20,20) padded input, dzt (N,256,16) scratch   ->   dwt (C,5,5,16)
    # overwritten: the weight gradient with the map index LAST (the caller transposes).
    # The 16 maps are the lanes: dz is first transposed to one 16-map vector per position (16 x 16
    # blocks through vector shuffles). A tile
    # is input maps c and c + 1 (a., e.) x kx = 0..4 for one ky: per position one vector load and
    # ten FMAs with splatted input values, which slide along x (b0..b4 = xp[n,c,y+ky,x:x+5], one
    # new splat per map and position). Each lane sums its positions in order (no lane sum). An odd
    # C computes its last map twice (c + 1 clamped): the same sums, written twice. On AVX2 the tile
    # is one input map (dw_maps_narrow).
    for n in range(dz.shape[0]):
        for y in range(16):
            _transpose_rows(dz, dzt, n, y)
    dw_maps(dz, xp, dzt, dwt)


@njit(inline="always")
def dw_maps_wide(dz, xp, dzt, dwt):
    # conv16_backward_dw_into's sums after the transpose, input maps c and c + 1 at a time
    N = dz.shape[0]
    C = xp.shape[1]
    for c in range(0, C, 2):
        c1 = min(c + 1, C - 1)
        for ky in range(5):
            a0 = a1 = a2 = a3 = a4 = e0 = e1 = e2 = e3 = e4 = vzero(dz)
            for n in range(N):
                for y in range(16):
                    row, row1 = xp[n, c, y + ky], xp[n, c1, y + ky]
                    b0, b1, b2, b3 = vsplat(row[0]), vsplat(row[1]), vsplat(row[2]), vsplat(row[3])
                    g0, g1, g2, g3 = vsplat(row1[0]), vsplat(row1[1]), vsplat(row1[2]), vsplat(row1[3])
                    for x in range(16):
                        b4, g4 = vsplat(row[x + 4]), vsplat(row1[x + 4])
                        d = vload(dzt, (n * 256 + y * 16 + x) * 16)
                        a0, a1, a2, a3 = fma4(b0, b1, b2, b3, d, a0, a1, a2, a3)
                        e0, e1, e2, e3 = fma4(g0, g1, g2, g3, d, e0, e1, e2, e3)
                        a4, e4 = vfma(d, b4, a4), vfma(d, g4, e4)
                        b0, b1, b2, b3 = b1, b2, b3, b4
                        g0, g1, g2, g3 = g1, g2, g3, g4
            o = (c * 5 + ky) * 80
            store4(dwt, o, 16, a0, a1, a2, a3)
            vstore(dwt, o + 64, a4)
            o = (c1 * 5 + ky) * 80
            store4(dwt, o, 16, e0, e1, e2, e3)
            vstore(dwt, o + 64, e4)


@njit(inline="always")
def dw_maps_narrow(dz, xp, dzt, dwt):
    # dw_maps_wide one input map at a time (a tile of kx = 0..4 for one ky), each input value
    # splatted afresh for each of its 5 FMAs rather than slid along x (the slid splats spill on
    # AVX2: 2x slower): AVX2's
    N = dz.shape[0]
    C = xp.shape[1]
    for c in range(C):
        for ky in range(5):
            a0 = a1 = a2 = a3 = a4 = vzero(dz)
            for n in range(N):
                for y in range(16):
                    row = xp[n, c, y + ky]
                    for x in range(16):
                        d = vload(dzt, (n * 256 + y * 16 + x) * 16)
                        a0, a1 = vfma(d, vsplat(row[x]), a0), vfma(d, vsplat(row[x + 1]), a1)
                        a2, a3 = vfma(d, vsplat(row[x + 2]), a2), vfma(d, vsplat(row[x + 3]), a3)
                        a4 = vfma(d, vsplat(row[x + 4]), a4)
            o = (c * 5 + ky) * 80
            store4(dwt, o, 16, a0, a1, a2, a3)
            vstore(dwt, o + 64, a4)


dw_maps = dw_maps_wide if WIDE else dw_maps_narrow


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
