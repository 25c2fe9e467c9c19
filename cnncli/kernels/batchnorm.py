"""Batch normalization: training mode per unit and per channel as per-shard phases and whole-batch
wrappers, inference mode as running statistics folded into a scale and shift (bn_fold_into). Not
the statistics (bnstats.py), the conv layers' fused kernels (bnpool.py), the cross-shard sums
(shards.py) nor the fused inference path (inference.py).
"""

# Batch normalization: training mode per unit (the seed's Part IV, and fc1's) and per channel
# (PyTorch's BatchNorm2d) as per-shard phases (normalize, gradient sums, backward from given sums) and
# whole-batch forward/backward wrappers built from them; inference mode as running statistics folded
# into a scale and shift (bn_fold_into).
#
# Shape legend: N images, D units of a flat layer (a conv layer seen as N x (F*H*W)), C channels,
# S positions of one map (H * W).

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .bnstats import bn_moments
from .checks import check_array, check_bn_z, check_out


# --------------------------------------------------------------------------------------------
# batch normalization, training mode (batch statistics, biased variance, sqrt(V + eps)), in
# phases so that a batch cut into micro-shards (cnncli/shards.py) gives the same statistics
# whoever computes which shard: every kernel works on ONE shard, the caller sums the shards'
# float64 partial sums in a fixed tree (distributed.tree_sum; the moments: bnstats.py) between the
# phases.
#   unit:    z (N,D),   statistics per unit d over the batch  (the seed's Part IV; fc BN too)
#   channel: z (N,C,S), statistics per channel c over (N,S)   (PyTorch BatchNorm2d)
#   forward:  sum(z) -> mean;  M2 = sum((z - mean)^2) -> var;  xhat = (z - mean) * invstd;
#             y = gamma * xhat + beta           (invstd = 1 / sqrt(var + eps), in float64)
#   backward, M values per statistic over the whole batch, sdy = sum(dy), sdyx = sum(dy*xhat):
#             dz = gamma*invstd/M * (M*dy - sdy - xhat*sdyx); dgamma = sdyx; dbeta = sdy
# Partial sums are float64 whatever the dtype, each summed in a fixed order; the kernels are
# serial and release the GIL (a shard is one worker thread's unit of work).
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def bn_unit_normalize_into(z, mean, invstd, gamma, beta, xhat, y):
    # z (N,D), mean (D,) invstd (D,) float64, gamma (D,) beta (D,)   ->   xhat (N,D), y (N,D)
    N, D = z.shape
    for n in range(N):
        zr, xr, yr = z[n], xhat[n], y[n]
        for d in range(D):
            xh = (zr[d] - mean[d]) * invstd[d]
            xr[d] = xh
            yr[d] = gamma[d] * xh + beta[d]


@njit(cache=True, nogil=True)
def bn_unit_grad_sums_into(dy, xhat, sdy, sdyx):
    # dy (N,D), xhat (N,D)   ->   sdy (D,), sdyx (D,) float64: sums over n of dy and dy*xhat
    N, D = dy.shape
    sdy[:] = 0.0
    sdyx[:] = 0.0
    for n in range(N):
        dr, xr = dy[n], xhat[n]
        for d in range(D):
            sdy[d] += dr[d]
            sdyx[d] += dr[d] * xr[d]


@njit(cache=True, nogil=True)
def bn_unit_backward_given_into(dy, xhat, gamma, invstd, sdy, sdyx, M, dz):
    # dy (N,D) xhat (N,D) gamma (D,), invstd sdy sdyx (D,) float64 (the whole batch's), M the
    # batch size   ->   dz (N,D)
    N, D = dy.shape
    g = np.empty(D)                      # (D,) float64
    for d in range(D):
        g[d] = gamma[d] * invstd[d] / M
    for n in range(N):
        dr, xr, zr = dy[n], xhat[n], dz[n]
        for d in range(D):
            zr[d] = g[d] * (M * dr[d] - sdy[d] - xr[d] * sdyx[d])


@njit(cache=True, nogil=True)
def bn_channel_normalize_into(z, mean, invstd, gamma, beta, xhat, y):
    # z (N,C,S), mean (C,) invstd (C,) float64, gamma (C,) beta (C,)   ->   xhat (N,C,S), y (N,C,S)
    N, C, S = z.shape
    for n in range(N):
        for c in range(C):
            m, inv, g, b = mean[c], invstd[c], gamma[c], beta[c]
            zr, xr, yr = z[n, c], xhat[n, c], y[n, c]
            for i in range(S):
                xh = (zr[i] - m) * inv
                xr[i] = xh
                yr[i] = g * xh + b


@njit(cache=True, nogil=True)
def bn_channel_grad_sums_into(dy, xhat, sdy, sdyx):
    # dy (N,C,S), xhat (N,C,S)   ->   sdy (C,), sdyx (C,) float64 (per-position accumulators first)
    N, C, S = dy.shape
    a = np.empty(S)                      # (S,) float64
    b = np.empty(S)                      # (S,) float64
    for c in range(C):
        a[:] = 0.0
        b[:] = 0.0
        for n in range(N):
            dr, xr = dy[n, c], xhat[n, c]
            for i in range(S):
                a[i] += dr[i]
                b[i] += dr[i] * xr[i]
        t = 0.0
        u = 0.0
        for i in range(S):
            t += a[i]
            u += b[i]
        sdy[c] = t
        sdyx[c] = u


@njit(cache=True, nogil=True)
def bn_channel_backward_given_into(dy, xhat, gamma, invstd, sdy, sdyx, M, dz):
    # dy (N,C,S) xhat (N,C,S) gamma (C,), invstd sdy sdyx (C,) float64 (the whole batch's), M the
    # values per channel in the batch (N_batch * S)   ->   dz (N,C,S)
    N, C, S = dy.shape
    for n in range(N):
        for c in range(C):
            g = gamma[c] * invstd[c] / M
            s, sx = sdy[c], sdyx[c]
            dr, xr, zr = dy[n, c], xhat[n, c], dz[n, c]
            for i in range(S):
                zr[i] = g * (M * dr[i] - s - xr[i] * sx)


def bn_kernel(ndim, phase):
    """The kernel of a phase ("normalize", "grad_sums", "backward_given") for z of ndim 2 (per unit)
    or 3 (per channel), looked up at call time (kernel_profile can wrap it)."""
    return globals()[f"bn_{'unit' if ndim == 2 else 'channel'}_{phase}_into"]


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


def bn_normalize(z, mean, invstd, gamma, beta):
    """One shard normalized with the batch's float64 mean and invstd -> (xhat, y), z's shape."""
    check_bn_z("z", z)
    for name, a in (("mean", mean), ("invstd", invstd)):
        check_array(name, a, (z.shape[1],), np.float64)
    for name, a in (("gamma", gamma), ("beta", beta)):
        check_array(name, a, (z.shape[1],), z.dtype)
    xhat, y = np.empty_like(z), np.empty_like(z)
    bn_kernel(z.ndim, "normalize")(z, mean, invstd, gamma, beta, xhat, y)
    return xhat, y


def bn_grad_sums(dy, xhat):
    """One shard's float64 (sum(dy), sum(dy*xhat)) per statistic."""
    check_bn_z("dy", dy)
    check_array("xhat", xhat, dy.shape, dy.dtype)
    sdy, sdyx = np.empty(dy.shape[1]), np.empty(dy.shape[1])           # (D,) or (C,) float64
    bn_kernel(dy.ndim, "grad_sums")(dy, xhat, sdy, sdyx)
    return sdy, sdyx


def bn_backward_given(dy, xhat, gamma, invstd, sdy, sdyx, count):
    """One shard's dz from the batch's float64 invstd, sum(dy), sum(dy*xhat) and its number of
    values per statistic (count)."""
    check_bn_z("dy", dy)
    check_array("xhat", xhat, dy.shape, dy.dtype)
    check_array("gamma", gamma, (dy.shape[1],), dy.dtype)
    for name, a in (("invstd", invstd), ("sdy", sdy), ("sdyx", sdyx)):
        check_array(name, a, (dy.shape[1],), np.float64)
    dz = np.empty_like(dy)
    bn_kernel(dy.ndim, "backward_given")(dy, xhat, gamma, invstd, sdy, sdyx, float(count), dz)
    return dz


def _count(z):
    return z.shape[0] if z.ndim == 2 else z.shape[0] * z.shape[2]


def _bn_forward(z, gamma, beta, eps):
    moments = bn_moments(z)                                             # the batch as one shard
    d = z.shape[1]
    mean, var = moments[:d] / _count(z), moments[d:] / _count(z)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat, y = bn_normalize(z, mean, invstd, gamma, beta)
    return y, xhat, mean, var, invstd


def _bn_backward(dy, xhat, gamma, invstd):
    sdy, sdyx = bn_grad_sums(dy, xhat)
    return bn_backward_given(dy, xhat, gamma, np.asarray(invstd, np.float64), sdy, sdyx, _count(dy)), sdyx, sdy


def bn_unit_forward(z, gamma, beta, eps=1e-5):
    """Per-unit BN of a whole batch taken as one shard: z (N,D), gamma (D,), beta (D,)
    -> (y, xhat (N,D), mean, var, invstd (D,) float64)."""
    return _bn_forward(check_array("z", z, (None, None)), gamma, beta, eps)


def bn_unit_backward(dy, xhat, gamma, invstd):
    """Gradients of bn_unit_forward: dy (N,D), xhat (N,D), gamma (D,), invstd (D,) -> (dz, dgamma, dbeta)."""
    return _bn_backward(check_array("dy", dy, (None, None)), xhat, gamma, invstd)


def bn_channel_forward(z, gamma, beta, eps=1e-5):
    """Per-channel BN of a whole batch: z (N,C,S) (S = H*W), gamma (C,), beta (C,)
    -> (y, xhat, mean, var, invstd (C,) float64)."""
    return _bn_forward(check_array("z", z, (None, None, None)), gamma, beta, eps)


def bn_channel_backward(dy, xhat, gamma, invstd):
    """Gradients of bn_channel_forward: dy (N,C,S), xhat, gamma (C,), invstd (C,) -> (dz, dgamma, dbeta)."""
    return _bn_backward(check_array("dy", dy, (None, None, None)), xhat, gamma, invstd)


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
