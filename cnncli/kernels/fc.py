"""The fully connected layer, z = x @ w.T + b, through BLAS (numpy's matmul; deterministic for
fixed shapes): the checked fc_forward / fc_backward and the unchecked `_into` forms model.py runs on
its workspaces (the same operations in the same order, so the same bits). No numba here.

Shape legend: N rows (images), I inputs, O outputs; w (O,I) as PyTorch's Linear.
"""

from __future__ import annotations

import numpy as np

from .checks import check_array, check_out


def fc_forward_into(x, w, b, z):
    """z (N,O) = x (N,I) @ w (O,I).T + b (O,), into z; nothing checked."""
    np.matmul(x, w.T, out=z)
    z += b


def fc_backward_into(dz, x, w, dw, db, dx=None):
    """dw (O,I) = dz.T @ x, db (O,) = sum of dz's rows, and dx (N,I) = dz @ w when given; nothing checked."""
    np.matmul(dz.T, x, out=dw)
    np.sum(dz, axis=0, out=db)
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
    np.matmul(dz.T, x, out=dw)
    np.sum(dz, axis=0, out=db)
    if need_dx:
        dx = check_out("dx", dx, (N, I), x.dtype)
        np.matmul(dz, w, out=dx)
    else:
        dx = None
    return dx, dw, db
