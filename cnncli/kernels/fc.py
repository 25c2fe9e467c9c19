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
from .simd import vadd, vload, vmul, vsplat, vstore


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
