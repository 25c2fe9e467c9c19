"""The generic convolution layer (any C, F, odd K, "same" padding, stride 1) and its pieces: padding,
conv2d_forward / conv2d_backward, the bias add. Not the network's own convolutions (conv32.py,
conv16.py), which the tests check against these loops.
"""

# Shape legend: N images, C input maps, F output maps (filters), H, W output height and width
# (= the input's), K filter size, P = K // 2 padding, Hp = H + 2P, Wp = W + 2P, S = H * W.
# Conventions (PyTorch's): NCHW, weights (F,C,K,K) applied as cross-correlation:
#     z[n,f,y,x] = b[f] + sum_{c,ky,kx} w[f,c,ky,kx] * xp[n,c,y+ky,x+kx]

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .checks import check_array, check_out


@njit(cache=True, parallel=True)
def pad_into(x, xp, P):
    # x (N,C,H,W) -> xp (N,C,H+2P,W+2P): border zero, interior x
    N, C, H, W = x.shape
    for n in prange(N):
        for c in range(C):
            for i in range(H + 2 * P):
                for j in range(W + 2 * P):
                    xp[n, c, i, j] = 0
            for i in range(H):
                for j in range(W):
                    xp[n, c, i + P, j + P] = x[n, c, i, j]


def pad2d(x, pad, out=None):
    """x (N,C,H,W) -> (N,C,H+2*pad,W+2*pad) with a zero border."""
    check_array("x", x, (None, None, None, None), contiguous=False)
    N, C, H, W = x.shape
    out = check_out("out", out, (N, C, H + 2 * pad, W + 2 * pad), x.dtype)
    pad_into(x, out, pad)
    return out


@njit(cache=True, parallel=True)
def conv2d_forward_into(xp, w, b, z):
    # xp (N,C,Hp,Wp) padded input   w (F,C,K,K)   b (F,)   ->   z (N,F,H,W)
    N, F, H, W = z.shape
    C = xp.shape[1]
    K = w.shape[2]
    for n in prange(N):                      # each image: writes z[n] only
        for f in range(F):
            for y in range(H):
                for x in range(W):
                    z[n, f, y, x] = b[f]
            for c in range(C):
                for ky in range(K):
                    for kx in range(K):
                        wv = w[f, c, ky, kx]
                        for y in range(H):
                            for x in range(W):   # innermost over output columns: vectorizes
                                z[n, f, y, x] += wv * xp[n, c, y + ky, x + kx]


@njit(cache=True, parallel=True)
def conv2d_backward_dx_into(dz, w, dxp):
    # dz (N,F,H,W)   w (F,C,K,K)   ->   dxp (N,C,Hp,Wp): gradient w.r.t. the PADDED input
    # forward reversed: every product w*xp that fed z[n,f,y,x] sends dz[n,f,y,x]*w back to xp
    N, F, H, W = dz.shape
    C = w.shape[1]
    K = w.shape[2]
    Hp = dxp.shape[2]
    Wp = dxp.shape[3]
    for n in prange(N):                      # each image: writes dxp[n] only
        for c in range(C):
            for i in range(Hp):
                for j in range(Wp):
                    dxp[n, c, i, j] = 0
        for f in range(F):
            for c in range(C):
                for ky in range(K):
                    for kx in range(K):
                        wv = w[f, c, ky, kx]
                        for y in range(H):
                            for x in range(W):
                                dxp[n, c, y + ky, x + kx] += wv * dz[n, f, y, x]


@njit(cache=True, parallel=True, nogil=True)
def conv2d_backward_dw_into(dz, xp, dw, db):
    # dz (N,F,H,W)   xp (N,C,Hp,Wp)   ->   dw (F,C,K,K), db (F,)
    # dw[f,c,ky,kx] = sum_{n,y,x} dz[n,f,y,x] * xp[n,c,y+ky,x+kx];  db[f] = sum_{n,y,x} dz[n,f,y,x]
    # partial sums are kept per output column x (a vector the compiler can use), then summed.
    # (The generic layer; the network's conv1 runs conv32_backward_dw_into.)
    N, F, H, W = dz.shape
    C = xp.shape[1]
    K = dw.shape[2]
    for f in prange(F):                      # each filter: writes dw[f], db[f] only
        acc = np.zeros((C, K, K, W), dtype=dz.dtype)     # (C,K,K,W) partial sums per column
        accb = np.zeros(W, dtype=dz.dtype)               # (W,)
        for n in range(N):
            for y in range(H):
                for x in range(W):
                    accb[x] += dz[n, f, y, x]
                for c in range(C):
                    for ky in range(K):
                        for kx in range(K):
                            for x in range(W):
                                acc[c, ky, kx, x] += dz[n, f, y, x] * xp[n, c, y + ky, x + kx]
        for c in range(C):
            for ky in range(K):
                for kx in range(K):
                    s = acc[c, ky, kx, 0]
                    for x in range(1, W):
                        s += acc[c, ky, kx, x]
                    dw[f, c, ky, kx] = s
        s = accb[0]
        for x in range(1, W):
            s += accb[x]
        db[f] = s


def _check_conv(x, w, b, pad):
    check_array("x", x, (None, None, None, None), contiguous=False)
    F, C, K, K2 = check_array("w", w, (None, x.shape[1], None, None), x.dtype).shape
    if K != K2 or K % 2 != 1 or pad != K // 2:
        raise ValueError(f"w has shape {w.shape}: need square odd filters with pad = K//2 (pad={pad})")
    if b is not None:
        check_array("b", b, (F,), x.dtype)
    return F, C, K


def conv2d_forward(x, w, b, pad=2, out=None, xpad=None):
    """x (N,C,H,W), w (F,C,K,K), b (F,) -> z (N,F,H,W). `xpad` (N,C,H+2P,W+2P) may be given as workspace."""
    F, C, K = _check_conv(x, w, b, pad)
    N, _, H, W = x.shape
    xp = pad2d(x, pad, out=xpad)
    out = check_out("out", out, (N, F, H, W), x.dtype)
    conv2d_forward_into(xp, w, b, out)
    return out


def conv2d_forward_padded(xp, w, b, out=None):
    """Same as conv2d_forward on an input already zero-padded: xp (N,C,H+2P,W+2P) -> z (N,F,H,W)."""
    check_array("xp", xp, (None, None, None, None), contiguous=False)
    F, C, K, _ = check_array("w", w, (None, xp.shape[1], None, None), xp.dtype).shape
    check_array("b", b, (F,), xp.dtype)
    N, _, Hp, Wp = xp.shape
    out = check_out("out", out, (N, F, Hp - K + 1, Wp - K + 1), xp.dtype)
    conv2d_forward_into(xp, w, b, out)
    return out


def conv2d_backward(dz, x, w, pad=2, need_dx=True, xpad=None, dxpad=None, dw=None, db=None):
    """Gradients of conv2d_forward: dz (N,F,H,W), x (N,C,H,W), w (F,C,K,K) -> (dx, dw, db).

    dx (N,C,H,W) is None when need_dx is False (the input layer). `xpad` may pass the padded input
    the forward pass already built; `dxpad` (N,C,H+2P,W+2P) is workspace for the padded gradient,
    and the returned dx is a view of its interior.
    """
    F, C, K = _check_conv(x, w, None, pad)
    N, _, H, W = x.shape
    check_array("dz", dz, (N, F, H, W), x.dtype, contiguous=False)
    xp = pad2d(x, pad) if xpad is None else check_array("xpad", xpad, (N, C, H + 2 * pad, W + 2 * pad),
                                                        x.dtype, contiguous=False)
    dw = check_out("dw", dw, (F, C, K, K), x.dtype)
    db = check_out("db", db, (F,), x.dtype)
    conv2d_backward_dw_into(dz, xp, dw, db)
    dx = None
    if need_dx:
        dxp = check_out("dxpad", dxpad, (N, C, H + 2 * pad, W + 2 * pad), x.dtype)
        conv2d_backward_dx_into(dz, w, dxp)
        dx = dxp[:, :, pad:pad + H, pad:pad + W]
    return dx, dw, db


@njit(cache=True, nogil=True)
def add_bias_into(z, b):
    # z (N,F,S) += b (F,) per map, in place
    N, F, S = z.shape
    for n in range(N):
        for f in range(F):
            bv = b[f]
            for i in range(S):
                z[n, f, i] += bv
