"""The fully connected layer, z = x @ w.T + b. The network's training steps run it in numba loops
(no BLAS: kernels/plainstep.py and bnstep.py run whole steps inside numba, and the per-shard paths
must give their bits): fc1's forward and input gradient in 16-lane tiles, fc2's (few outputs) in
scalar loops, the weight and bias gradients in one loop. The checked fc_forward / fc_backward
(tests, the reference comparisons) use BLAS (numpy's matmul) for the forward and input gradient.

Shape legend: N rows (images), I inputs, O outputs; w (O,I) as PyTorch's Linear.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out
from .simd import sfma, vadd, vfma, vhsum, vload, vmul, vsplat, vstore, vzero


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
    # caller: fc1 in the one-call steps): each dot product in 16 lanes over i in order (fma), the
    # lanes added left to right (vhsum), the last I % 16 terms after them, then b; four images
    # times two outputs at a time (eight independent chains; an odd O's last output twice, the same
    # sums). The same bits for any N and any grouping. One _finish site per loop: compile time.
    N, I = x.shape
    O = w.shape[0]
    V = I - I % 16
    acc = np.empty((8, 16), x.dtype)                 # (8,16) the tile's lanes, then finished one by one
    for n0 in range(0, N - N % 4, 4):
        r0, r1, r2, r3 = n0 * I, (n0 + 1) * I, (n0 + 2) * I, (n0 + 3) * I
        for o in range(0, O, 2):
            o1 = min(o + 1, O - 1)
            a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
            c0, c1, c2, c3 = vzero(x), vzero(x), vzero(x), vzero(x)
            for i in range(0, V, 16):
                wv, wu = vload(w, o * I + i), vload(w, o1 * I + i)
                x0, x1, x2, x3 = vload(x, r0 + i), vload(x, r1 + i), vload(x, r2 + i), vload(x, r3 + i)
                a0, a1, a2, a3 = vfma(x0, wv, a0), vfma(x1, wv, a1), vfma(x2, wv, a2), vfma(x3, wv, a3)
                c0, c1, c2, c3 = vfma(x0, wu, c0), vfma(x1, wu, c1), vfma(x2, wu, c2), vfma(x3, wu, c3)
            vstore(acc, 0, a0)
            vstore(acc, 16, a1)
            vstore(acc, 32, a2)
            vstore(acc, 48, a3)
            vstore(acc, 64, c0)
            vstore(acc, 80, c1)
            vstore(acc, 96, c2)
            vstore(acc, 112, c3)
            for k in range(8):
                _finish(x, w, b, z, n0 + k % 4, o if k < 4 else o1, vload(acc, k * 16))
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
    for n in range(N):              # the columns the pairs left: I % 64 of a pair's rows, all of a last odd row
        _dx_columns(dz, w, dx, n, I - I % 64 if n < N - N % 2 else 0)


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


@njit(cache=True, nogil=True)
def fc_narrow_forward_into(x, w, b, z):
    # x (N,I), w (O,I), b (O,) for few outputs (fc2: O = the classes)   ->   z (N,O) = x @ w.T + b
    # with no BLAS: each dot product over i in order (the first product rounded, then adds), the O
    # of a row side by side (independent sums: no chain of dependent adds), then b
    N, I = x.shape
    O = w.shape[0]
    for n in range(N):
        for o in range(O):
            z[n, o] = x[n, 0] * w[o, 0]
        for i in range(1, I):
            for o in range(O):
                z[n, o] += x[n, i] * w[o, i]
        for o in range(O):
            z[n, o] += b[o]


@njit(cache=True, nogil=True)
def fc_narrow_dx_into(dz, w, dx):
    # dz (N,O), w (O,I) for few outputs   ->   dx (N,I) = dz @ w with no BLAS, over o in order
    N, O = dz.shape
    I = w.shape[1]
    for n in range(N):
        for i in range(I):
            dx[n, i] = dz[n, 0] * w[0, i]
        for o in range(1, O):
            for i in range(I):
                dx[n, i] += dz[n, o] * w[o, i]


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
