"""Batch normalization: training mode per unit (the seed's Part IV, and fc1's) and per channel
(PyTorch's BatchNorm2d), forward/backward pairs; inference mode as running statistics folded into
a scale and shift (bn_fold_into) and applied per channel. Not the running-statistics update
(model.py's, PyTorch's rule) nor the fused inference path (inference.py applies the fold).

Shape legend: N images, D units of a flat layer (a conv layer seen as N x (F*H*W)), C channels,
S positions of one map (H * W).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .checks import check_array, check_out


# --------------------------------------------------------------------------------------------
# batch normalization, training mode (batch statistics, biased variance, sqrt(V + eps)).
#   unit:    z (N,D),   statistics per unit d over the batch  (the seed's Part IV; fc BN too)
#   channel: z (N,C,S), statistics per channel c over (N,S)   (PyTorch BatchNorm2d)
#   xhat = (z - mean) * invstd;  y = gamma * xhat + beta
#   backward, M values per statistic:
#   dz = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)); dgamma = sum(dy*xhat); dbeta = sum(dy)
# Statistics are summed in float64 whatever the dtype.
# --------------------------------------------------------------------------------------------

_UNIT_BLOCK = 512   # units per parallel task in per-unit BN (inner loops run along d: vectorized)


@njit(cache=True, parallel=True)
def bn_unit_forward_into(z, gamma, beta, eps, y, xhat, mean, var, invstd):
    # z (N,D) gamma (D,) beta (D,)  ->  y (N,D), xhat (N,D), mean (D,), var (D,), invstd (D,)
    # statistics of unit d summed over n in order, in float64; a block of units per task.
    # Rows are sliced to the block (zr = z[n, d0:d1]) so that the inner index k counts from 0:
    # with z[n, d0 + k] numba's negative-index fix-up kept the loops scalar (3.0 vs 0.8 ms for
    # (128, 6144) float32, one thread; the same bits).
    N, D = z.shape
    nblocks = (D + _UNIT_BLOCK - 1) // _UNIT_BLOCK
    for bi in prange(nblocks):
        d0 = bi * _UNIT_BLOCK
        d1 = min(D, d0 + _UNIT_BLOCK)
        L = d1 - d0
        s = np.zeros(L)                  # (block,) float64 sums
        for n in range(N):
            zr = z[n, d0:d1]
            for k in range(L):
                s[k] += zr[k]
        m = s / N
        v = np.zeros(L)
        for n in range(N):
            zr = z[n, d0:d1]
            for k in range(L):
                t = zr[k] - m[k]
                v[k] += t * t
        v /= N
        inv = 1.0 / np.sqrt(v + eps)
        g = gamma[d0:d1]
        b = beta[d0:d1]
        for n in range(N):
            zr = z[n, d0:d1]
            xr = xhat[n, d0:d1]
            yr = y[n, d0:d1]
            for k in range(L):
                xh = (zr[k] - m[k]) * inv[k]
                xr[k] = xh
                yr[k] = g[k] * xh + b[k]
        mean[d0:d1] = m
        var[d0:d1] = v
        invstd[d0:d1] = inv


@njit(cache=True, parallel=True)
def bn_unit_backward_into(dy, xhat, gamma, invstd, dz, dgamma, dbeta):
    # dy (N,D) xhat (N,D) gamma (D,) invstd (D,)  ->  dz (N,D), dgamma (D,), dbeta (D,)
    # rows sliced to the block as in bn_unit_forward_into
    N, D = dy.shape
    nblocks = (D + _UNIT_BLOCK - 1) // _UNIT_BLOCK
    for bi in prange(nblocks):
        d0 = bi * _UNIT_BLOCK
        d1 = min(D, d0 + _UNIT_BLOCK)
        L = d1 - d0
        sdy = np.zeros(L)                # (block,) float64 sums
        sdyx = np.zeros(L)
        for n in range(N):
            dr = dy[n, d0:d1]
            xr = xhat[n, d0:d1]
            for k in range(L):
                sdy[k] += dr[k]
                sdyx[k] += dr[k] * xr[k]
        g = np.empty(L)
        for k in range(L):
            g[k] = gamma[d0 + k] * invstd[d0 + k] / N
        dgamma[d0:d1] = sdyx
        dbeta[d0:d1] = sdy
        for n in range(N):
            dr = dy[n, d0:d1]
            xr = xhat[n, d0:d1]
            zr = dz[n, d0:d1]
            for k in range(L):
                zr[k] = g[k] * (N * dr[k] - sdy[k] - xr[k] * sdyx[k])


@njit(cache=True, parallel=True)
def bn_channel_forward_into(z, gamma, beta, eps, y, xhat, mean, var, invstd):
    # z (N,C,S) gamma (C,) beta (C,)  ->  y (N,C,S), xhat (N,C,S), mean (C,), var (C,), invstd (C,)
    # sums over n go into one float64 accumulator per position i (a vector: no serial add chain),
    # then over i; the order is fixed
    N, C, S = z.shape
    M = N * S
    for c in prange(C):
        acc = np.zeros(S)                # (S,) float64
        for n in range(N):
            for i in range(S):
                acc[i] += z[n, c, i]
        m = acc.sum() / M
        acc[:] = 0
        for n in range(N):
            for i in range(S):
                t = z[n, c, i] - m
                acc[i] += t * t
        v = acc.sum() / M
        inv = 1.0 / math.sqrt(v + eps)
        g = gamma[c]
        b = beta[c]
        for n in range(N):
            for i in range(S):
                xh = (z[n, c, i] - m) * inv
                xhat[n, c, i] = xh
                y[n, c, i] = g * xh + b
        mean[c] = m
        var[c] = v
        invstd[c] = inv


@njit(cache=True, parallel=True)
def bn_channel_backward_into(dy, xhat, gamma, invstd, dz, dgamma, dbeta):
    # dy (N,C,S) xhat (N,C,S) gamma (C,) invstd (C,)  ->  dz (N,C,S), dgamma (C,), dbeta (C,)
    N, C, S = dy.shape
    M = N * S
    for c in prange(C):
        acc_dy = np.zeros(S)             # (S,) float64
        acc_dyx = np.zeros(S)            # (S,) float64
        for n in range(N):
            for i in range(S):
                acc_dy[i] += dy[n, c, i]
                acc_dyx[i] += dy[n, c, i] * xhat[n, c, i]
        sdy = acc_dy.sum()
        sdyx = acc_dyx.sum()
        dgamma[c] = sdyx
        dbeta[c] = sdy
        g = gamma[c] * invstd[c] / M
        for n in range(N):
            for i in range(S):
                dz[n, c, i] = g * (M * dy[n, c, i] - sdy - xhat[n, c, i] * sdyx)


@njit(cache=True, parallel=True)
def affine_channel_into(z, scale, shift, y):
    # z (N,C,S) scale (C,) shift (C,)  ->  y (N,C,S) = z*scale + shift   (BN in inference mode)
    N, C, S = z.shape
    for n in prange(N):
        for c in range(C):
            a = scale[c]
            b = shift[c]
            for i in range(S):
                y[n, c, i] = z[n, c, i] * a + b


def _bn_outputs(z, stat_shape, out):
    y, xhat, mean, var, invstd = (None,) * 5 if out is None else out
    y = check_out("y", y, z.shape, z.dtype)
    xhat = check_out("xhat", xhat, z.shape, z.dtype)
    mean = check_out("mean", mean, stat_shape, z.dtype)
    var = check_out("var", var, stat_shape, z.dtype)
    invstd = check_out("invstd", invstd, stat_shape, z.dtype)
    return y, xhat, mean, var, invstd


def bn_unit_forward(z, gamma, beta, eps=1e-5, out=None):
    """Per-unit BN over the batch: z (N,D), gamma (D,), beta (D,) -> (y, xhat, mean, var, invstd).

    `out` may be a 5-tuple of preallocated arrays (y (N,D), xhat (N,D), mean, var, invstd (D,)).
    """
    N, D = check_array("z", z, (None, None)).shape
    check_array("gamma", gamma, (D,), z.dtype)
    check_array("beta", beta, (D,), z.dtype)
    res = _bn_outputs(z, (D,), out)
    bn_unit_forward_into(z, gamma, beta, eps, *res)
    return res


def bn_unit_backward(dy, xhat, gamma, invstd, out=None):
    """Gradients of bn_unit_forward: dy (N,D), xhat (N,D), gamma (D,), invstd (D,) -> (dz, dgamma, dbeta)."""
    N, D = check_array("dy", dy, (None, None)).shape
    check_array("xhat", xhat, (N, D), dy.dtype)
    check_array("gamma", gamma, (D,), dy.dtype)
    check_array("invstd", invstd, (D,), dy.dtype)
    dz, dgamma, dbeta = (None,) * 3 if out is None else out
    dz = check_out("dz", dz, (N, D), dy.dtype)
    dgamma = check_out("dgamma", dgamma, (D,), dy.dtype)
    dbeta = check_out("dbeta", dbeta, (D,), dy.dtype)
    bn_unit_backward_into(dy, xhat, gamma, invstd, dz, dgamma, dbeta)
    return dz, dgamma, dbeta


def bn_channel_forward(z, gamma, beta, eps=1e-5, out=None):
    """Per-channel BN: z (N,C,S) (S = H*W), gamma (C,), beta (C,) -> (y, xhat, mean, var, invstd)."""
    N, C, S = check_array("z", z, (None, None, None)).shape
    check_array("gamma", gamma, (C,), z.dtype)
    check_array("beta", beta, (C,), z.dtype)
    res = _bn_outputs(z, (C,), out)
    bn_channel_forward_into(z, gamma, beta, eps, *res)
    return res


def bn_channel_backward(dy, xhat, gamma, invstd, out=None):
    """Gradients of bn_channel_forward: dy (N,C,S), xhat, gamma (C,), invstd (C,) -> (dz, dgamma, dbeta)."""
    N, C, S = check_array("dy", dy, (None, None, None)).shape
    check_array("xhat", xhat, (N, C, S), dy.dtype)
    check_array("gamma", gamma, (C,), dy.dtype)
    check_array("invstd", invstd, (C,), dy.dtype)
    dz, dgamma, dbeta = (None,) * 3 if out is None else out
    dz = check_out("dz", dz, (N, C, S), dy.dtype)
    dgamma = check_out("dgamma", dgamma, (C,), dy.dtype)
    dbeta = check_out("dbeta", dbeta, (C,), dy.dtype)
    bn_channel_backward_into(dy, xhat, gamma, invstd, dz, dgamma, dbeta)
    return dz, dgamma, dbeta


def bn_inference(z, gamma, beta, running_mean, running_var, eps=1e-5, out=None):
    """BN with running statistics: z (N,C,S), per-channel stats (C,) -> y (N,C,S).

    For per-unit BN pass z as (N,D,1) and stats of shape (D,).
    """
    N, C, S = check_array("z", z, (None, None, None)).shape
    for name, arr in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                      ("running_var", running_var)):
        check_array(name, arr, (C,), z.dtype)
    scale, shift = np.empty(C, z.dtype), np.empty(C, z.dtype)             # (C,) each
    bn_fold_into(gamma, beta, running_mean, running_var, z.dtype.type(eps), scale, shift)
    out = check_out("out", out, z.shape, z.dtype)
    affine_channel_into(z, scale, shift, out)
    return out


@njit(cache=True, error_model="numpy")
def bn_fold_into(gamma, beta, running_mean, running_var, eps, scale, shift):
    # (D,) each, eps a scalar of their dtype   ->   scale = gamma / sqrt(var + eps), shift = beta - mean * scale
    # error_model="numpy": no ZeroDivisionError check per element (var + eps > 0), so LLVM vectorizes
    for i in range(gamma.shape[0]):
        scale[i] = gamma[i] / math.sqrt(running_var[i] + eps)
        shift[i] = beta[i] - running_mean[i] * scale[i]
