"""The fully connected layer, z = x @ w.T + b: the forward and the input gradient through BLAS
(numpy's matmul; deterministic for fixed shapes), the weight and bias gradients in one numba loop
(a shard's 8 rows are too few for BLAS); the checked fc_forward / fc_backward and the unchecked
`_into` forms passes.py runs on its workspaces (the same operations in the same order, so the same bits).

Shape legend: N rows (images), I inputs, O outputs; w (O,I) as PyTorch's Linear.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out
from .simd import sfma, vadd, vfma, vhsum, vload, vmul, vsplat, vstore, vzero


def fc_forward_into(x, w, b, z):
    """z (N,O) = x (N,I) @ w (O,I).T + b (O,), into z; nothing checked."""
    np.matmul(x, w.T, out=z)
    z += b


@njit(cache=True, nogil=True)
def fc_grads_into(dz, x, dw, db):
    # dz (N,O), x (N,I) C-contiguous   ->   dw (O,I) = sum over n of dz[n,o] * x[n,:], db (O,) = sum
    # over n of dz[n,o]: each summed over n in order, products rounded then added (no fma); 64
    # columns of a row at a time in four 16-lane accumulators, the last I % 64 columns scalar
    N, O = dz.shape
    I = x.shape[1]
    if N == 0:
        dw[:, :] = 0.0
        db[:] = 0.0
        return
    I64 = I - I % 64
    for o in range(O):
        s = dz[0, o]
        for n in range(1, N):
            s += dz[n, o]
        db[o] = s
        for i in range(0, I64, 64):
            a = vsplat(dz[0, o])
            a0, a1 = vmul(a, vload(x, i)), vmul(a, vload(x, i + 16))
            a2, a3 = vmul(a, vload(x, i + 32)), vmul(a, vload(x, i + 48))
            for n in range(1, N):
                a = vsplat(dz[n, o])
                r = n * I + i
                a0, a1 = vadd(a0, vmul(a, vload(x, r))), vadd(a1, vmul(a, vload(x, r + 16)))
                a2, a3 = vadd(a2, vmul(a, vload(x, r + 32))), vadd(a3, vmul(a, vload(x, r + 48)))
            r = o * I + i
            vstore(dw, r, a0)
            vstore(dw, r + 16, a1)
            vstore(dw, r + 32, a2)
            vstore(dw, r + 48, a3)
        for i in range(I64, I):
            t = dz[0, o] * x[0, i]
            for n in range(1, N):
                t += dz[n, o] * x[n, i]
            dw[o, i] = t


@njit(cache=True, nogil=True)
def fc_forward_loop_into(x, w, b, z):
    # x (N,I), w (O,I), b (O,) C-contiguous   ->   z (N,O) = x @ w.T + b, with no BLAS (for a numba
    # caller: a BN step's fc1): each dot product in 16 lanes over i in order (fma), the lanes added
    # left to right (vhsum), the last I % 16 terms after them, then b; four images times two
    # outputs at a time (eight independent chains). The same bits for any N and any grouping.
    N, I = x.shape
    O = w.shape[0]
    V = I - I % 16
    for n0 in range(0, N - N % 4, 4):
        r0, r1, r2, r3 = n0 * I, (n0 + 1) * I, (n0 + 2) * I, (n0 + 3) * I
        for o in range(0, O - O % 2, 2):
            a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
            c0, c1, c2, c3 = vzero(x), vzero(x), vzero(x), vzero(x)
            for i in range(0, V, 16):
                wv, wu = vload(w, o * I + i), vload(w, (o + 1) * I + i)
                x0, x1, x2, x3 = vload(x, r0 + i), vload(x, r1 + i), vload(x, r2 + i), vload(x, r3 + i)
                a0, a1, a2, a3 = vfma(x0, wv, a0), vfma(x1, wv, a1), vfma(x2, wv, a2), vfma(x3, wv, a3)
                c0, c1, c2, c3 = vfma(x0, wu, c0), vfma(x1, wu, c1), vfma(x2, wu, c2), vfma(x3, wu, c3)
            _finish(x, w, b, z, n0, o, a0)
            _finish(x, w, b, z, n0 + 1, o, a1)
            _finish(x, w, b, z, n0 + 2, o, a2)
            _finish(x, w, b, z, n0 + 3, o, a3)
            _finish(x, w, b, z, n0, o + 1, c0)
            _finish(x, w, b, z, n0 + 1, o + 1, c1)
            _finish(x, w, b, z, n0 + 2, o + 1, c2)
            _finish(x, w, b, z, n0 + 3, o + 1, c3)
        for o in range(O - O % 2, O):
            a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
            for i in range(0, V, 16):
                wv = vload(w, o * I + i)
                a0, a1 = vfma(vload(x, r0 + i), wv, a0), vfma(vload(x, r1 + i), wv, a1)
                a2, a3 = vfma(vload(x, r2 + i), wv, a2), vfma(vload(x, r3 + i), wv, a3)
            _finish(x, w, b, z, n0, o, a0)
            _finish(x, w, b, z, n0 + 1, o, a1)
            _finish(x, w, b, z, n0 + 2, o, a2)
            _finish(x, w, b, z, n0 + 3, o, a3)
    for n in range(N - N % 4, N):
        for o in range(O):
            a = vzero(x)
            for i in range(0, V, 16):
                a = vfma(vload(x, n * I + i), vload(w, o * I + i), a)
            _finish(x, w, b, z, n, o, a)


@njit(inline="always")
def _finish(x, w, b, z, n, o, a):
    # z[n, o] = the lanes of a added left to right + the last I % 16 terms of x[n] . w[o] in order, + b[o]
    I = x.shape[1]
    t = vhsum(a)
    for i in range(I - I % 16, I):
        t += x[n, i] * w[o, i]
    z[n, o] = t
    z[n, o] += b[o]


@njit(cache=True, nogil=True)
def fc_dx_loop_into(dz, w, dx):
    # dz (N,O), w (O,I) C-contiguous   ->   dx (N,I) = dz @ w with no BLAS: each element summed
    # over o in order (the first product rounded, then fma), two images times 64 columns (eight
    # vectors) at a time, the last I % 16 columns one by one; the same bits for any N and grouping
    N, O = dz.shape
    I = w.shape[1]
    for n0 in range(0, N - N % 2, 2):
        r, s = n0 * I, (n0 + 1) * I
        for i in range(0, I - I % 64, 64):
            a, c = vsplat(dz[n0, 0]), vsplat(dz[n0 + 1, 0])
            w0, w1, w2, w3 = vload(w, i), vload(w, i + 16), vload(w, i + 32), vload(w, i + 48)
            d0, d1, d2, d3 = vmul(a, w0), vmul(a, w1), vmul(a, w2), vmul(a, w3)
            e0, e1, e2, e3 = vmul(c, w0), vmul(c, w1), vmul(c, w2), vmul(c, w3)
            for o in range(1, O):
                a, c, q = vsplat(dz[n0, o]), vsplat(dz[n0 + 1, o]), o * I + i
                w0, w1, w2, w3 = vload(w, q), vload(w, q + 16), vload(w, q + 32), vload(w, q + 48)
                d0, d1, d2, d3 = vfma(a, w0, d0), vfma(a, w1, d1), vfma(a, w2, d2), vfma(a, w3, d3)
                e0, e1, e2, e3 = vfma(c, w0, e0), vfma(c, w1, e1), vfma(c, w2, e2), vfma(c, w3, e3)
            vstore(dx, r + i, d0)
            vstore(dx, r + i + 16, d1)
            vstore(dx, r + i + 32, d2)
            vstore(dx, r + i + 48, d3)
            vstore(dx, s + i, e0)
            vstore(dx, s + i + 16, e1)
            vstore(dx, s + i + 32, e2)
            vstore(dx, s + i + 48, e3)
        _dx_columns(dz, w, dx, n0, I - I % 64)
        _dx_columns(dz, w, dx, n0 + 1, I - I % 64)
    for n in range(N - N % 2, N):
        _dx_columns(dz, w, dx, n, 0)


@njit(inline="always")
def _dx_columns(dz, w, dx, n, i0):
    # dx[n, i0:] = dz[n] @ w[:, i0:], 16 columns at a time, the operations of the blocks above,
    # then the last I % 16 columns with the same operations one lane at a time
    O = dz.shape[1]
    I = w.shape[1]
    V = I - I % 16
    for i in range(i0, V, 16):
        d = vmul(vsplat(dz[n, 0]), vload(w, i))
        for o in range(1, O):
            d = vfma(vsplat(dz[n, o]), vload(w, o * I + i), d)
        vstore(dx, n * I + i, d)
    for i in range(max(i0, V), I):
        t = dz[n, 0] * w[0, i]
        for o in range(1, O):
            t = sfma(dz[n, o], w[o, i], t)
        dx[n, i] = t


def fc_backward_into(dz, x, w, dw, db, dx=None):
    """dw (O,I) = dz.T @ x, db (O,) = sum of dz's rows (fc_grads_into), and dx (N,I) = dz @ w when
    given; nothing checked (x, dz, dw C-contiguous)."""
    fc_grads_into(dz, x, dw, db)
    if dx is not None:
        np.matmul(dz, w, out=dx)


def fc_forward(x, w, b, out=None):
    """x (N,I), w (O,I), b (O,) -> z (N,O)."""
    N, I = check_array("x", x, (None, None), contiguous=False).shape
    O = check_array("w", w, (None, I), x.dtype).shape[0]
    check_array("b", b, (O,), x.dtype)
    out = check_out("out", out, (N, O), x.dtype)
    np.matmul(x, w.T, out=out)
    out += b
    return out


def fc_backward(dz, x, w, need_dx=True, dx=None, dw=None, db=None):
    """Gradients of fc_forward: dz (N,O), x (N,I), w (O,I) -> (dx (N,I) or None, dw (O,I), db (O,))."""
    N, I = check_array("x", x, (None, None), contiguous=False).shape
    O = check_array("w", w, (None, I), x.dtype).shape[0]
    check_array("dz", dz, (N, O), x.dtype, contiguous=False)
    dw = check_out("dw", dw, (O, I), x.dtype)
    db = check_out("db", db, (O,), x.dtype)
    dwc = dw if dw.flags.c_contiguous else np.empty((O, I), x.dtype)              # the kernel's dw is C-order
    fc_grads_into(np.ascontiguousarray(dz), np.ascontiguousarray(x), dwc, db)
    if dwc is not dw:
        dw[...] = dwc
    if need_dx:
        dx = check_out("dx", dx, (N, I), x.dtype)
        np.matmul(dz, w, out=dx)
    else:
        dx = None
    return dx, dw, db
