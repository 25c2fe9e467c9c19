"""The fully connected layer, z = x @ w.T + b: the training steps' numba loops (no BLAS inside numba)
and the checked fc_forward / fc_backward (BLAS) the tests compare with. Not the head under BN
(head.py), the weight and bias gradients (fcgrad.py) nor the inference path's calls (inference.py).
"""

# The fully connected layer, z = x @ w.T + b. The network's training steps run it in numba loops
# (no BLAS: kernels/plainstep.py and bnstep.py run whole steps inside numba, and the per-shard paths
# must give their bits): fc1's forward and input gradient in 16-lane tiles, fc2's (few outputs) in
# scalar loops; the weight and bias gradients are fcgrad.py's. The inference path runs fc1's
# forward loop too. The checked fc_forward / fc_backward (tests, the reference comparisons) use BLAS
# (numpy's matmul) for the forward and input gradient.
#
# Shape legend: N rows (images), I inputs, O outputs; w (O,I) as PyTorch's Linear; B images of a
# batch, L shards.

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out
from .fcgrad import fc_grads_into
from .simd import WIDE, sfma, vfma, vhsum, vload, vmul, vsplat, vstore, vzero


@njit(cache=True, nogil=True)
def fc_forward_loop_into(x, w, b, z):
    # x (N,I), w (O,I), b (O,) C-contiguous   ->   z (N,O) = x @ w.T + b, with no BLAS (for a numba
    # caller: fc1 in the one-call steps): each dot product in 16 lanes over i in order (fma), the
    # lanes added left to right (vhsum), the last I % 16 terms after them, then b; four images
    # times four outputs at a time (16 independent chains, one x and one w load per 4 FMAs; the
    # outputs past O - 1 clamped to it: the same sums again). The same bits for any N and any
    # grouping. One _finish site per loop: compile time.
    forward_tiles(x, w, b, z)


@njit(inline="always")
def forward_tiles_wide(x, w, b, z):
    # fc_forward_loop_into's loops: four images x four outputs at a time
    N, I = x.shape
    O = w.shape[0]
    V = I - I % 16
    acc = np.empty((16, 16), x.dtype)                # (16,16) the tile's lanes, then finished one by one
    for n0 in range(0, N - N % 4, 4):
        r0, r1, r2, r3 = n0 * I, (n0 + 1) * I, (n0 + 2) * I, (n0 + 3) * I
        for o in range(0, O, 4):
            q1, q2, q3 = min(o + 1, O - 1), min(o + 2, O - 1), min(o + 3, O - 1)
            a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
            c0, c1, c2, c3 = vzero(x), vzero(x), vzero(x), vzero(x)
            e0, e1, e2, e3 = vzero(x), vzero(x), vzero(x), vzero(x)
            g0, g1, g2, g3 = vzero(x), vzero(x), vzero(x), vzero(x)
            for i in range(0, V, 16):
                x0, x1, x2, x3 = vload(x, r0 + i), vload(x, r1 + i), vload(x, r2 + i), vload(x, r3 + i)
                wv = vload(w, o * I + i)
                a0, a1, a2, a3 = vfma(x0, wv, a0), vfma(x1, wv, a1), vfma(x2, wv, a2), vfma(x3, wv, a3)
                wv = vload(w, q1 * I + i)
                c0, c1, c2, c3 = vfma(x0, wv, c0), vfma(x1, wv, c1), vfma(x2, wv, c2), vfma(x3, wv, c3)
                wv = vload(w, q2 * I + i)
                e0, e1, e2, e3 = vfma(x0, wv, e0), vfma(x1, wv, e1), vfma(x2, wv, e2), vfma(x3, wv, e3)
                wv = vload(w, q3 * I + i)
                g0, g1, g2, g3 = vfma(x0, wv, g0), vfma(x1, wv, g1), vfma(x2, wv, g2), vfma(x3, wv, g3)
            for k, v in enumerate((a0, a1, a2, a3, c0, c1, c2, c3, e0, e1, e2, e3, g0, g1, g2, g3)):
                vstore(acc, k * 16, v)
            for k in range(16):
                _finish(x, w, b, z, n0 + k % 4, min(o + k // 4, O - 1), vload(acc, k * 16))
    _forward_rows(x, w, b, z, N - N % 4)


@njit(inline="always")
def forward_tiles_narrow(x, w, b, z):
    # fc_forward_loop_into's loops with two images x two outputs at a time (the wide tile's 21
    # vectors spill on AVX2): the same sums
    N, I = x.shape
    O = w.shape[0]
    V = I - I % 16
    acc = np.empty((4, 16), x.dtype)                 # (4,16) the tile's lanes, then finished one by one
    for n0 in range(0, N - N % 2, 2):
        r0, r1 = n0 * I, (n0 + 1) * I
        for o in range(0, O, 2):
            q = min(o + 1, O - 1)
            a0, a1, c0, c1 = vzero(x), vzero(x), vzero(x), vzero(x)
            for i in range(0, V, 16):
                x0, x1 = vload(x, r0 + i), vload(x, r1 + i)
                wv = vload(w, o * I + i)
                a0, a1 = vfma(x0, wv, a0), vfma(x1, wv, a1)
                wv = vload(w, q * I + i)
                c0, c1 = vfma(x0, wv, c0), vfma(x1, wv, c1)
            for k, v in enumerate((a0, a1, c0, c1)):
                vstore(acc, k * 16, v)
            for k in range(4):
                _finish(x, w, b, z, n0 + k % 2, min(o + k // 2, O - 1), vload(acc, k * 16))
    _forward_rows(x, w, b, z, N - N % 2)


forward_tiles = forward_tiles_wide if WIDE else forward_tiles_narrow


@njit(inline="always")
def _forward_rows(x, w, b, z, n0):
    # the rows n0.. the tiles left, one dot product at a time with the tiles' operations
    N, I = x.shape
    V = I - I % 16
    for n in range(n0, N):
        for o in range(w.shape[0]):
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
    # over o in order (the first product rounded, then fma), four images times 64 columns (16
    # vectors) at a time, the other columns and images through _dx_columns (the same operations);
    # the same bits for any N and grouping
    dx_tiles(dz, w, dx)


@njit(inline="always")
def dx_tiles_wide(dz, w, dx):
    # fc_dx_loop_into's loops: four images x 64 columns at a time
    N, O = dz.shape
    I = w.shape[1]
    for n0 in range(0, N - N % 4, 4):
        r, s, t, u = n0 * I, (n0 + 1) * I, (n0 + 2) * I, (n0 + 3) * I
        for i in range(0, I - I % 64, 64):
            a, c, e, g = vsplat(dz[n0, 0]), vsplat(dz[n0 + 1, 0]), vsplat(dz[n0 + 2, 0]), vsplat(dz[n0 + 3, 0])
            w0, w1, w2, w3 = vload(w, i), vload(w, i + 16), vload(w, i + 32), vload(w, i + 48)
            d0, d1, d2, d3 = vmul(a, w0), vmul(a, w1), vmul(a, w2), vmul(a, w3)
            e0, e1, e2, e3 = vmul(c, w0), vmul(c, w1), vmul(c, w2), vmul(c, w3)
            f0, f1, f2, f3 = vmul(e, w0), vmul(e, w1), vmul(e, w2), vmul(e, w3)
            h0, h1, h2, h3 = vmul(g, w0), vmul(g, w1), vmul(g, w2), vmul(g, w3)
            for o in range(1, O):
                q = o * I + i
                a, c, e, g = vsplat(dz[n0, o]), vsplat(dz[n0 + 1, o]), vsplat(dz[n0 + 2, o]), vsplat(dz[n0 + 3, o])
                w0, w1, w2, w3 = vload(w, q), vload(w, q + 16), vload(w, q + 32), vload(w, q + 48)
                d0, d1, d2, d3 = vfma(a, w0, d0), vfma(a, w1, d1), vfma(a, w2, d2), vfma(a, w3, d3)
                e0, e1, e2, e3 = vfma(c, w0, e0), vfma(c, w1, e1), vfma(c, w2, e2), vfma(c, w3, e3)
                f0, f1, f2, f3 = vfma(e, w0, f0), vfma(e, w1, f1), vfma(e, w2, f2), vfma(e, w3, f3)
                h0, h1, h2, h3 = vfma(g, w0, h0), vfma(g, w1, h1), vfma(g, w2, h2), vfma(g, w3, h3)
            for k, v in enumerate((d0, d1, d2, d3)):
                vstore(dx, r + i + 16 * k, v)
            for k, v in enumerate((e0, e1, e2, e3)):
                vstore(dx, s + i + 16 * k, v)
            for k, v in enumerate((f0, f1, f2, f3)):
                vstore(dx, t + i + 16 * k, v)
            for k, v in enumerate((h0, h1, h2, h3)):
                vstore(dx, u + i + 16 * k, v)
    for n in range(N):        # the columns the blocks left: I % 64 of a block's rows, all of the last N % 4 rows
        _dx_columns(dz, w, dx, n, I - I % 64 if n < N - N % 4 else 0)


@njit(inline="always")
def dx_tiles_narrow(dz, w, dx):
    # fc_dx_loop_into's loops with two images x 32 columns at a time (the wide tile's 24 vectors
    # spill on AVX2): the same sums
    N, O = dz.shape
    I = w.shape[1]
    for n0 in range(0, N - N % 2, 2):
        r, s = n0 * I, (n0 + 1) * I
        for i in range(0, I - I % 32, 32):
            a, c = vsplat(dz[n0, 0]), vsplat(dz[n0 + 1, 0])
            w0, w1 = vload(w, i), vload(w, i + 16)
            d0, d1, e0, e1 = vmul(a, w0), vmul(a, w1), vmul(c, w0), vmul(c, w1)
            for o in range(1, O):
                q = o * I + i
                a, c = vsplat(dz[n0, o]), vsplat(dz[n0 + 1, o])
                w0, w1 = vload(w, q), vload(w, q + 16)
                d0, d1, e0, e1 = vfma(a, w0, d0), vfma(a, w1, d1), vfma(c, w0, e0), vfma(c, w1, e1)
            vstore(dx, r + i, d0)
            vstore(dx, r + i + 16, d1)
            vstore(dx, s + i, e0)
            vstore(dx, s + i + 16, e1)
    for n in range(N):        # the columns the blocks left: I % 32 of a block's rows, all of the last N % 2 rows
        _dx_columns(dz, w, dx, n, I - I % 32 if n < N - N % 2 else 0)


dx_tiles = dx_tiles_wide if WIDE else dx_tiles_narrow


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
