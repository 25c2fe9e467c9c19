"""2x2 max pooling, stride 2: the plain layer and the network's fused pool+ELU, written straight into
the next layer's padded input, with 16-lane versions for the network's two map sizes. Not the ELU
itself (activation.py) nor the inference path's pooling (inference.py).
"""

# Shape legend: N images, C maps, H, W input height and width (even), H/2, W/2 the pooled maps.
# argmax (int8, like the pooled maps) = 2*dy + dx of the window's winner; ties -> the first maximum.

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activation import elu, velu
from .checks import check_array, check_out
from .simd import vadd, vload, vmul, vsplat, vstore, vzero
from .simdlanes import veven, vload_i8, vodd, vsel_eq, vsel_gt, vstore_i8, vzip_hi, vzip_lo



@njit(inline="always")
def _window_max(a, n, c, i, j):
    # a (N,C,H,W) -> (max of the 2x2 window at (i,j), its position 0..3 row-major; ties: the first)
    best = a[n, c, 2 * i, 2 * j]
    k = 0
    v = a[n, c, 2 * i, 2 * j + 1]
    if v > best:
        best = v
        k = 1
    v = a[n, c, 2 * i + 1, 2 * j]
    if v > best:
        best = v
        k = 2
    v = a[n, c, 2 * i + 1, 2 * j + 1]
    if v > best:
        best = v
        k = 3
    return best, k


@njit(inline="always")
def _window_route(g, k, da, n, c, i, j):
    # writes the 2x2 window (i,j) of da (N,C,H,W): g at position k, 0 at the other three
    da[n, c, 2 * i, 2 * j] = g if k == 0 else 0
    da[n, c, 2 * i, 2 * j + 1] = g if k == 1 else 0
    da[n, c, 2 * i + 1, 2 * j] = g if k == 2 else 0
    da[n, c, 2 * i + 1, 2 * j + 1] = g if k == 3 else 0


@njit(cache=True, parallel=True)
def maxpool2x2_forward_into(a, out, arg):
    # a (N,C,H,W)   ->   out (N,C,H/2,W/2), arg (N,C,H/2,W/2) int8 in 0..3
    N, C, Ho, Wo = out.shape
    for n in prange(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best, k = _window_max(a, n, c, i, j)
                    out[n, c, i, j] = best
                    arg[n, c, i, j] = k


@njit(cache=True, parallel=True)
def maxpool2x2_backward_into(dout, arg, da):
    # dout (N,C,H/2,W/2), arg (N,C,H/2,W/2)   ->   da (N,C,H,W): dout routed to the winner, 0 elsewhere
    N, C, Ho, Wo = dout.shape
    for n in prange(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, c, i, j]
                    k = arg[n, c, i, j]
                    _window_route(g, k, da, n, c, i, j)


def maxpool2x2_forward(a, out=None, argmax=None):
    """a (N,C,H,W), H and W even -> (out (N,C,H/2,W/2), argmax int8 (N,C,H/2,W/2))."""
    check_array("a", a, (None, None, None, None), contiguous=False)
    N, C, H, W = a.shape
    if H % 2 or W % 2:
        raise ValueError(f"a has shape {a.shape}: height and width must be even for 2x2 pooling")
    out = check_out("out", out, (N, C, H // 2, W // 2), a.dtype)
    argmax = check_out("argmax", argmax, (N, C, H // 2, W // 2), np.int8)
    maxpool2x2_forward_into(a, out, argmax)
    return out, argmax


def maxpool2x2_backward(dout, argmax, out=None):
    """dout (N,C,H/2,W/2), argmax from the forward pass -> da (N,C,H,W)."""
    check_array("dout", dout, (None, None, None, None), contiguous=False)
    check_array("argmax", argmax, dout.shape, np.int8, contiguous=False)
    N, C, Ho, Wo = dout.shape
    out = check_out("out", out, (N, C, 2 * Ho, 2 * Wo), dout.dtype)
    maxpool2x2_backward_into(dout, argmax, out)
    return out


@njit(inline="always")
def _pool_plane(z, bv, pp, o, arg, n, c, Ho, Wo):
    # one (n, c) plane of pool_elu_forward_into: pp[.., o+i, o+j] = ELU(window max + bv), arg
    for i in range(Ho):
        for j in range(Wo):
            best, k = _window_max(z, n, c, i, j)
            pp[n, c, o + i, o + j] = elu(best + bv)
            arg[n, c, i, j] = k


@njit(inline="always")
def _unpool_plane(dp, pp, o, arg, dz, n, c, Ho, Wo):
    # one (n, c) plane of pool_elu_backward_into; v + 1 in the array's dtype, as the vectors do
    # (with the int literal 1, numba computed it in float64 for float32 arrays)
    one = dz.dtype.type(1)
    for i in range(Ho):
        for j in range(Wo):
            v = pp[n, c, o + i, o + j]
            g = dp[n, c, i, j] if v > 0 else dp[n, c, i, j] * (v + one)
            _window_route(g, arg[n, c, i, j], dz, n, c, i, j)


# The network's two pooling shapes in 16-lane vectors (simd.py): 16 windows at a time, their
# four positions gathered by even/odd lane shuffles of the input rows, the scalar comparisons
# above as lane selects (same order, same ties, same NaN behaviour: the same bits; the
# positions travel as small whole floats). conv1: 32-wide rows -> 16 windows of one output row;
# conv2: 16-wide rows, two output rows of 8 windows (pp without a border, o = 0).

@njit(inline="always")
def _windows(W, v0, v1, v2, v3):
    # a block's 4 vectors in memory order (W = 32: two input rows of 32; W = 16: four rows of 16)
    #   ->   its windows' positions 0, 1, 2, 3 (16 windows each)
    if W == 32:
        return veven(v0, v1), vodd(v0, v1), veven(v2, v3), vodd(v2, v3)
    return veven(v0, v2), vodd(v0, v2), veven(v1, v3), vodd(v1, v3)


@njit(inline="always")
def _window_max_v(a, b, c, d, pos):
    # a, b, c, d: window positions 0..3 of 16 windows, pos = (0, 1, 2, 3) as vectors
    #   ->   (max, its position); ties keep the first
    k = vsel_gt(b, a, pos[1], pos[0])
    best = vsel_gt(b, a, b, a)
    k = vsel_gt(c, best, pos[2], k)
    best = vsel_gt(c, best, c, best)
    k = vsel_gt(d, best, pos[3], k)
    best = vsel_gt(d, best, d, best)
    return best, k


@njit(inline="always")
def _positions(a):
    # (0, 1, 2, 3) as vectors of a's dtype
    zero = vzero(a)
    one = vsplat(a.dtype.type(1))
    two = vadd(one, one)
    return zero, one, two, vadd(two, one)


@njit(inline="always")
def _pool_plane_v(z, bv, pp, o, arg, n, c, W):
    # _pool_plane for W = 32 (o any) or W = 16 (o = 0, pp rows of 8)
    C = z.shape[1]
    Hq, Wq = pp.shape[2], pp.shape[3]
    pos = _positions(z)
    b16 = vsplat(bv)
    if W == 32:
        for i in range(16):
            r = (n * C + c) * 1024 + i * 64                  # input rows 2i, 2i+1
            v0, v1, v2, v3 = vload(z, r), vload(z, r + 16), vload(z, r + 32), vload(z, r + 48)
            p0, p1, p2, p3 = _windows(32, v0, v1, v2, v3)
            best, k = _window_max_v(p0, p1, p2, p3, pos)
            vstore(pp, ((n * C + c) * Hq + o + i) * Wq + o, velu(vadd(best, b16)))
            vstore_i8(arg, (n * C + c) * 256 + i * 16, k)
    else:
        for i in range(0, 8, 2):
            r = (n * C + c) * 256 + i * 32                   # input rows 2i .. 2i+3
            v0, v1, v2, v3 = vload(z, r), vload(z, r + 16), vload(z, r + 32), vload(z, r + 48)
            p0, p1, p2, p3 = _windows(16, v0, v1, v2, v3)
            best, k = _window_max_v(p0, p1, p2, p3, pos)
            vstore(pp, (n * C + c) * 64 + i * 8, velu(vadd(best, b16)))
            vstore_i8(arg, (n * C + c) * 64 + i * 8, k)


@njit(inline="always")
def _unpool_plane_v(dp, pp, o, arg, dz, n, c, W):
    # _unpool_plane for W = 32 (o any) or W = 16 (o = 0)
    C = dz.shape[1]
    Hq, Wq = pp.shape[2], pp.shape[3]
    zero, one, two, three = _positions(dz)
    if W == 32:
        for i in range(16):
            dv = vload(dp, (n * C + c) * 256 + i * 16)
            pv = vload(pp, ((n * C + c) * Hq + o + i) * Wq + o)
            kv = vload_i8(arg, (n * C + c) * 256 + i * 16, dz)
            g = vsel_gt(pv, zero, dv, vmul(dv, vadd(pv, one)))
            e0, e1 = vsel_eq(kv, zero, g, zero), vsel_eq(kv, one, g, zero)
            e2, e3 = vsel_eq(kv, two, g, zero), vsel_eq(kv, three, g, zero)
            r = (n * C + c) * 1024 + i * 64
            vstore(dz, r, vzip_lo(e0, e1))
            vstore(dz, r + 16, vzip_hi(e0, e1))
            vstore(dz, r + 32, vzip_lo(e2, e3))
            vstore(dz, r + 48, vzip_hi(e2, e3))
    else:
        for i in range(0, 8, 2):
            dv = vload(dp, (n * C + c) * 64 + i * 8)
            pv = vload(pp, (n * C + c) * 64 + i * 8)
            kv = vload_i8(arg, (n * C + c) * 64 + i * 8, dz)
            g = vsel_gt(pv, zero, dv, vmul(dv, vadd(pv, one)))
            e0, e1 = vsel_eq(kv, zero, g, zero), vsel_eq(kv, one, g, zero)
            e2, e3 = vsel_eq(kv, two, g, zero), vsel_eq(kv, three, g, zero)
            r = (n * C + c) * 256 + i * 32
            vstore(dz, r, vzip_lo(e0, e1))
            vstore(dz, r + 16, vzip_lo(e2, e3))
            vstore(dz, r + 32, vzip_hi(e0, e1))
            vstore(dz, r + 48, vzip_hi(e2, e3))


@njit(cache=True, nogil=True)
def pool_elu_forward_into(z, b, pp, o, arg):
    # z (N,C,H,W) pre-activation, b (C,) bias added here   ->   pp (N,C,H/2+2o,W/2+2o) C-contiguous,
    # whose interior pp[:, :, o:-o, o:-o] (all of it when o = 0) gets p = ELU(max window + b) and
    # whose border must be 0 (stays 0 = ELU(0): o = 2 writes conv2's zero-padded input directly);
    # arg (N,C,H/2,W/2) int8. Same as maxpool(ELU(z + b)): ELU is increasing, so it commutes with
    # max (ties stay ties), and it runs on a quarter of the values, just before the store. The
    # network's two shapes run in vectors (_pool_plane_v, activation.velu), each in a loop of its
    # own (a shape test per plane made conv2's loop 1.5x slower). Every array C-contiguous.
    N, C, Ho, Wo = arg.shape
    if Ho == 16 and Wo == 16:
        for n in range(N):
            for c in range(C):
                _pool_plane_v(z, b[c], pp, o, arg, n, c, 32)
    elif Ho == 8 and Wo == 8 and o == 0:
        for n in range(N):
            for c in range(C):
                _pool_plane_v(z, b[c], pp, o, arg, n, c, 16)
    else:
        for n in range(N):
            for c in range(C):
                _pool_plane(z, b[c], pp, o, arg, n, c, Ho, Wo)


@njit(cache=True, nogil=True)
def pool_elu_backward_into(dp, pp, o, arg, dz):
    # dp (N,C,H/2,W/2) gradient of p, pp holding p as pool_elu_forward_into wrote it (offset o), arg
    #   ->   dz (N,C,H,W): dp * ELU'(winner) at the winner of each window (ELU' = 1 if p > 0 else
    # p + 1), 0 elsewhere. Every array C-contiguous.
    N, C, Ho, Wo = dp.shape
    if Ho == 16 and Wo == 16:
        for n in range(N):
            for c in range(C):
                _unpool_plane_v(dp, pp, o, arg, dz, n, c, 32)
    elif Ho == 8 and Wo == 8 and o == 0:
        for n in range(N):
            for c in range(C):
                _unpool_plane_v(dp, pp, o, arg, dz, n, c, 16)
    else:
        for n in range(N):
            for c in range(C):
                _unpool_plane(dp, pp, o, arg, dz, n, c, Ho, Wo)


def pool_elu_forward(z, b, out=None, argmax=None):
    """Fused maxpool2x2(ELU(z + b)): z (N,C,H,W), b (C,) -> (p (N,C,H/2,W/2), argmax int8);
    an `out` given must be C-contiguous (the kernel writes it by flat offsets)."""
    N, C, H, W = check_array("z", z, (None, None, None, None), contiguous=False).shape
    check_array("b", b, (C,), z.dtype)
    if H % 2 or W % 2:
        raise ValueError(f"z has shape {z.shape}: height and width must be even for 2x2 pooling")
    out = check_out("out", out, (N, C, H // 2, W // 2), z.dtype)
    if not out.flags.c_contiguous:
        raise ValueError(f"out (shape {out.shape}) must be C-contiguous")
    argmax = check_out("argmax", argmax, (N, C, H // 2, W // 2), np.int8)
    pool_elu_forward_into(np.ascontiguousarray(z), b, out, 0, argmax)
    return out, argmax


def pool_elu_backward(dp, p, argmax, out=None):
    """Gradient of pool_elu_forward w.r.t. z: dp, p, argmax (N,C,H/2,W/2) -> dz (N,C,H,W)."""
    N, C, Ho, Wo = check_array("dp", dp, (None, None, None, None), contiguous=False).shape
    check_array("p", p, dp.shape, dp.dtype, contiguous=False)
    check_array("argmax", argmax, dp.shape, np.int8, contiguous=False)
    out = check_out("out", out, (N, C, 2 * Ho, 2 * Wo), dp.dtype)
    c = np.ascontiguousarray
    pool_elu_backward_into(c(dp), c(p), 0, c(argmax), out)
    return out

