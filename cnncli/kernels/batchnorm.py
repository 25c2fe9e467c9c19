"""Batch normalization: training mode per unit (the seed's Part IV, and fc1's) and per channel
(PyTorch's BatchNorm2d) as per-shard phases (partial sums, normalize, backward from given sums) and
whole-batch forward/backward wrappers built from them; inference mode as running statistics folded
into a scale and shift (bn_fold_into). Not the running-statistics update nor the cross-shard
sums (shards.py) nor the fused inference path (inference.py applies the fold).

Shape legend: N images, D units of a flat layer (a conv layer seen as N x (F*H*W)), C channels,
S positions of one map (H * W).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .checks import check_array, check_out
from .simd import vadd, vdiv, vfma, vhsum, vload, vmul, vsplat, vstore, vsub, vwiden, vzero


# --------------------------------------------------------------------------------------------
# batch normalization, training mode (batch statistics, biased variance, sqrt(V + eps)), in
# phases so that a batch cut into micro-shards (cnncli/shards.py) gives the same statistics
# whoever computes which shard: every kernel works on ONE shard, the caller sums the shards'
# float64 partial sums in a fixed tree (distributed.tree_sum) between the phases.
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


# The forward's statistics in one phase: each shard's sum and its sum of squared deviations about
# its OWN mean (M2), both while its z is still in cache; the shards' (sum, M2) then meet in
# tree_sum's pairwise tree, M2 combined as Chan, Golub and LeVeque's parallel variance:
#   M2 = M2a + M2b + (mean_b - mean_a)^2 * n_a n_b / (n_a + n_b),   mean = sum / n
# (the sums add exactly as tree_sum adds them, so the mean is tree_sum's bits).

@njit(inline="always")
def _unit_block(z, d, bv, add_bias, out):
    # units d .. d+15 of z (N,D) (+ bv in place first when add_bias) -> out[d..], out[D + d..]
    N, D = z.shape
    acc = vzero(out)
    for n in range(N):
        v = vload(z, n * D + d)
        if add_bias:
            v = vadd(v, bv)
            vstore(z, n * D + d, v)
        acc = vadd(acc, vwiden(v))
    vstore(out, d, acc)
    mean = vdiv(acc, vsplat(float(N)))
    m2 = vzero(out)
    for n in range(N):
        t = vsub(vwiden(vload(z, n * D + d)), mean)
        m2 = vadd(m2, vmul(t, t))                # (not an fma: the bits of _unit_scalar, lane by lane)
    vstore(out, D + d, m2)


@njit(inline="always")
def _unit_scalar(z, d, out):
    # unit d of z (N,D) -> out[d], out[D + d], the operations of one lane of _unit_block
    N, D = z.shape
    t = 0.0
    for n in range(N):
        t += z[n, d]
    out[d] = t
    mean = t / N
    m2 = 0.0
    for n in range(N):
        u = z[n, d] - mean
        m2 += u * u
    out[D + d] = m2


@njit(cache=True, nogil=True)
def bn_unit_moments_into(z, out):
    # z (N,D)   ->   out (2D,) float64: [sum over n (in order) | sum over n of (z - shard mean)^2],
    # 16 units at a time in float64 vectors (each block through all n in registers), the last
    # D % 16 units one by one
    N, D = z.shape
    V = D - D % 16
    for d in range(0, V, 16):
        _unit_block(z, d, vsplat(z.dtype.type(0)), False, out)
    for d in range(V, D):
        _unit_scalar(z, d, out)


@njit(inline="always")
def _channel_moments(z, b, add_bias, out):
    # z (N,C,S) (+ b[c] in place first when add_bias)   ->   out (2C,) float64: [sum | sum of
    # (z - shard mean)^2] per channel over (n, i): 16 float64 lanes over n and i in order (the last
    # S % 16 positions one by one into a scalar), the lanes added left to right, then the scalar
    N, C, S = z.shape
    V = S - S % 16
    for c in range(C):
        acc = vzero(out)
        t = 0.0
        for n in range(N):
            base = (n * C + c) * S
            for i in range(0, V, 16):
                v = vload(z, base + i)
                if add_bias:
                    v = vadd(v, vsplat(b[c]))
                    vstore(z, base + i, v)
                acc = vadd(acc, vwiden(v))
            for i in range(V, S):
                if add_bias:
                    z[n, c, i] += b[c]
                t += z[n, c, i]
        total = vhsum(acc) + t
        out[c] = total
        m = total / (N * S)
        mv = vsplat(m)
        acc = vzero(out)
        t = 0.0
        for n in range(N):
            base = (n * C + c) * S
            for i in range(0, V, 16):
                u = vsub(vwiden(vload(z, base + i)), mv)
                acc = vfma(u, u, acc)
            for i in range(V, S):
                u = z[n, c, i] - m
                t += u * u
        out[C + c] = vhsum(acc) + t


@njit(cache=True, nogil=True)
def bn_channel_moments_into(z, out):
    # z (N,C,S)   ->   out (2C,) float64 (_channel_moments)
    _channel_moments(z, np.empty(0, z.dtype), False, out)


@njit(cache=True, nogil=True)
def bn_bias_moments_into(z, b, out):
    # z (N,C,S) a conv layer's output without its bias, b (C,)   ->   z += b in place (the bits of
    # conv.add_bias_into) and out = BN's moments of the result: (2C,) per channel or (2CS,) per
    # unit (the bits of bn_channel_moments_into / bn_unit_moments_into), in one pass fewer
    N, C, S = z.shape
    if out.shape[0] == 2 * C:
        _channel_moments(z, b, True, out)
        return
    zu = z.reshape(N, C * S)                     # (N,D) per unit, D = C*S
    V = S - S % 16
    for c in range(C):
        bv = vsplat(b[c])
        for d in range(c * S, c * S + V, 16):
            _unit_block(zu, d, bv, True, out)
        for d in range(c * S + V, (c + 1) * S):
            for n in range(N):
                zu[n, d] += b[c]
            _unit_scalar(zu, d, out)


@njit(nogil=True)
def _chan_pair(src, a, b, na, nb, dst, o):
    # rows a and b of src (.,2D) [sum | M2] over na and nb values -> row o of dst: sums added, M2s
    # combined (Chan et al.); 16 statistics at a time in float64 vectors, the same operations as
    # the scalar tail lane by lane. dst may be src with o <= a (every value is read before written).
    W = src.shape[1]
    D = W // 2
    V = D - D % 16
    f = na * nb / (na + nb)
    ra, rb, ro = a * W, b * W, o * W
    va, vb, vf = vsplat(na), vsplat(nb), vsplat(f)
    for d in range(0, V, 16):
        sa, sb = vload(src, ra + d), vload(src, rb + d)
        delta = vsub(vdiv(sb, vb), vdiv(sa, va))
        m2 = vadd(vadd(vload(src, ra + D + d), vload(src, rb + D + d)), vmul(vmul(delta, delta), vf))
        vstore(dst, ro + D + d, m2)
        vstore(dst, ro + d, vadd(sa, sb))
    for d in range(V, D):
        sa, sb = src[a, d], src[b, d]
        delta = sb / nb - sa / na
        dst[o, D + d] = src[a, D + d] + src[b, D + d] + delta * delta * f
        dst[o, d] = sa + sb


@njit(inline="always")
def _copy_row(src, i, dst):
    # dst (W,) = src[i] (a loop: numba compiles a slice assignment several times slower)
    for d in range(dst.shape[0]):
        dst[d] = src[i, d]


@njit(cache=True, nogil=True)
def bn_moments_tree_into(parts, counts, out):
    # parts (S,2D) float64, shard rows [sum | M2], counts (S,) values per statistic in each shard
    #   ->   out (2D,) the batch's [sum | M2]: rows 2i and 2i+1 combined level by level into row i,
    #   an odd last row carried up (tree_sum's tree). The first level reads parts, the next ones
    #   work in place in a half-size buffer. counts float64.
    S, W = parts.shape
    work = np.empty(((S + 1) // 2, W))          # (ceil(S/2),2D) every level after the first
    cnt = np.empty((S + 1) // 2)                # (ceil(S/2),) their value counts
    src, src_cnt, n = parts, counts, S
    while n > 1:
        half = n // 2
        for i in range(half):
            na, nb = src_cnt[2 * i], src_cnt[2 * i + 1]
            _chan_pair(src, 2 * i, 2 * i + 1, na, nb, work, i)
            cnt[i] = na + nb
        if n % 2:
            _copy_row(src, n - 1, work[half])
            cnt[half] = src_cnt[n - 1]
        src, src_cnt, n = work, cnt, half + n % 2
    _copy_row(src, 0, out)


@njit(cache=True, nogil=True)
def bn_stats_into(moments, M, eps, stats, keep, m, unbias, running_mean, running_var):
    # moments (2D,) float64 the batch's [sum | M2] over M values per statistic   ->   stats rows
    # 0, 1, 2 (D,) float64: mean, biased var, invstd = 1 / sqrt(var + eps); and when running_mean
    # has D values (the network keeps running statistics, in its dtype): running = running * keep
    # + stat * m, the variance's stat unbiased (unbias = m * M / (M - 1)), keep = 1 - m in the
    # buffers' dtype: the operations (and bits) of the same update written with numpy's in-place
    # operators on those buffers
    D = moments.shape[0] // 2
    for d in range(D):
        mean = moments[d] / M
        var = moments[D + d] / M
        stats[0, d] = mean
        stats[1, d] = var
        stats[2, d] = 1.0 / math.sqrt(var + eps)
    if running_mean.shape[0] == D:
        for d in range(D):
            running_mean[d] = running_mean[d] * keep + stats[0, d] * m
            running_var[d] = running_var[d] * keep + stats[1, d] * unbias


def bn_kernel(ndim, phase):
    """The kernel of a phase ("moments", "normalize", "grad_sums", "backward_given") for z of ndim 2
    (per unit) or 3 (per channel), looked up at call time (kernel_profile can wrap it)."""
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


def _check_z(name, z, dtype=None):
    """z (N,D) for per-unit BN or (N,C,S) for per-channel BN."""
    if getattr(z, "ndim", None) not in (2, 3):
        raise ValueError(f"{name} must have shape (N, D) or (N, C, S), got {np.shape(z)}")
    return check_array(name, z, (None,) * z.ndim, dtype)


def bn_moments(z):
    """One shard's float64 [sum | sum of (z - its own mean)^2] per statistic: z (N,D) per unit or
    (N,C,S) per channel -> (2D,) or (2C,)."""
    _check_z("z", z)
    out = np.empty(2 * z.shape[1])                                      # (2D,) or (2C,) float64
    bn_kernel(z.ndim, "moments")(z, out)
    return out


def bn_moments_tree(parts, counts):
    """The batch's [sum | M2] from the shards' rows parts (S,2D) and their values per statistic
    counts (S,), through tree_sum's tree (bn_moments_tree_into)."""
    parts = check_array("parts", parts, (None, None), np.float64)
    counts = check_array("counts", counts, (parts.shape[0],), np.float64)
    if parts.shape[0] < 1 or parts.shape[1] % 2 or not np.all(counts > 0):
        raise ValueError(f"parts must be (S >= 1, 2D) with counts > 0, got {parts.shape} and {counts}")
    out = np.empty(parts.shape[1])                                      # (2D,) float64
    bn_moments_tree_into(parts, counts, out)
    return out


def bn_normalize(z, mean, invstd, gamma, beta):
    """One shard normalized with the batch's float64 mean and invstd -> (xhat, y), z's shape."""
    _check_z("z", z)
    for name, a in (("mean", mean), ("invstd", invstd)):
        check_array(name, a, (z.shape[1],), np.float64)
    for name, a in (("gamma", gamma), ("beta", beta)):
        check_array(name, a, (z.shape[1],), z.dtype)
    xhat, y = np.empty_like(z), np.empty_like(z)
    bn_kernel(z.ndim, "normalize")(z, mean, invstd, gamma, beta, xhat, y)
    return xhat, y


def bn_grad_sums(dy, xhat):
    """One shard's float64 (sum(dy), sum(dy*xhat)) per statistic."""
    _check_z("dy", dy)
    check_array("xhat", xhat, dy.shape, dy.dtype)
    sdy, sdyx = np.empty(dy.shape[1]), np.empty(dy.shape[1])           # (D,) or (C,) float64
    bn_kernel(dy.ndim, "grad_sums")(dy, xhat, sdy, sdyx)
    return sdy, sdyx


def bn_backward_given(dy, xhat, gamma, invstd, sdy, sdyx, count):
    """One shard's dz from the batch's float64 invstd, sum(dy), sum(dy*xhat) and its number of
    values per statistic (count)."""
    _check_z("dy", dy)
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
