"""Numba kernels for the CNN: forward/backward pairs of every layer.

Shape legend (every array below carries a shape comment in these letters):
    N       images in the batch
    C       input maps (channels) of a layer
    F       output maps (filters) of a convolution
    H, W    height, width of a convolution's output maps (= its input's: stride 1, "same" padding)
    K       filter size (5); P = K // 2 zero padding; Hp = H + 2P, Wp = W + 2P (padded input)
    S       spatial positions of one map (H * W), used by per-channel batch norm
    D       units of a flat layer (fully connected, or a conv layer seen as N x (F*H*W))
    I, O    inputs, outputs of a fully connected layer

Conventions (PyTorch's): NCHW, conv weights (F,C,K,K) applied as cross-correlation, fc weights (O,I).
Rules kept everywhere:
  * Numba kernels (`_k_*`) only loop; they never allocate their outputs and never check anything.
    The public wrappers check shapes/dtypes (ValueError naming the argument and its shape) and
    allocate outputs that the caller did not pass in.
  * Kernels have no signatures: the same code compiles for float32 and float64.
  * Every parallel loop (`prange`) writes only its own slice of every output and sums in a fixed
    order, so results are bitwise reproducible run to run and for any thread count.
  * No fastmath: the gradients are checked against finite differences. The direct convolutions
    use explicit fused multiply-adds (cnncli.simd.vfma, llvm.fma: rounded once, the same bits on
    every CPU), not fastmath contraction.

Threads (measured on the 2-core machine, see scripts/bench_core.py): numba's default OpenMP layer
busy-waits between parallel loops, and OpenBLAS runs its own busy-waiting threads; together, or
with any other load on the machine, a training step became 5-25x slower. So (1) unless the user
set it, OMP_WAIT_POLICY defaults to "passive" here, before numba starts its OpenMP pool, and
(2) `blas_single_thread()` (cnncli.blas) keeps OpenBLAS on one thread while the network runs (its
GEMMs, the fc layers', are small); numba's own threads (numba.set_num_threads) do the parallel work.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# LLVM's SLP vectorizer (numba turned it off by default in 0.57 after miscompilations, numba PR
# #8852) is on here unless the user set NUMBA_SLP_VECTORIZE: it made the pooling backward 2.9x and
# the one-image fc1 3x faster (docs/performance.md). Without fastmath it cannot change a float
# result (no reassociation); tests/test_slp.py checks bitwise that it does not, against a
# build without it. It only takes effect when numba is first imported here.
os.environ.setdefault("NUMBA_SLP_VECTORIZE", "1")

import numpy as np  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import overload  # noqa: E402

from .arch import FLOAT_DTYPES  # noqa: E402,F401
from .blas import single_thread as blas_single_thread  # noqa: E402,F401  (model.py uses it as K.*)
from .blas import threads_api as _openblas_threads_api  # noqa: E402
from .simd import (float_from_bits, vadd, veven, vfma, vhsum, vload, vload_i8, vmul, vodd,  # noqa: E402
                   vsel_eq, vsel_gt, vsplat, vstore, vstore_i8, vzero, vzip_hi, vzip_lo)


def set_threads(threads: int) -> int:
    """Numba's thread count, and OpenBLAS's (numpy's matmul) when it can be reached; 0 = all cores."""
    import numba

    n = min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    blas = _openblas_threads_api()
    if blas is not None:
        blas[1](n)
    return n


# --------------------------------------------------------------------------------------------
# argument checks (used by the wrappers here and by model.py)
# --------------------------------------------------------------------------------------------

def check_array(name, arr, shape, dtype=None, contiguous=True):
    """Raise ValueError unless `arr` is an ndarray of `shape` (None = any size) and `dtype`."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "(" + ",".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} has shape {arr.shape}, expected {want}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} has dtype {arr.dtype} (shape {arr.shape}), expected {np.dtype(dtype)}")
    if dtype is None and arr.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {arr.dtype} (shape {arr.shape}), expected float32 or float64")
    if contiguous and not arr.flags.c_contiguous:
        raise ValueError(f"{name} (shape {arr.shape}) must be C-contiguous")
    return arr


def _out(name, out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    return check_array(name, out, shape, dtype, contiguous=False)


# --------------------------------------------------------------------------------------------
# input batches: uint8 images -> network input through a (256,) lookup table (normalization)
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _k_lookup_batch(images, idx, table, x):
    # images (M,H,W) uint8, idx (N,) int, table (256,)   ->   x (N,1,H,W) = table[images[idx]]
    # (one pass, no temporaries: numpy's fancy indexing took ~158 us for 64 images, this with its
    # wrapper's checks ~54 us)
    for n in range(idx.shape[0]):
        m = idx[n]
        for i in range(images.shape[1]):
            for j in range(images.shape[2]):
                x[n, 0, i, j] = table[images[m, i, j]]


def lookup_batch(images, idx, table, out=None):
    """The network input for images[idx]: images (M,H,W) uint8, idx (N,) indices, table (256,)
    (value -> input) -> x (N,1,H,W) of table's dtype, equal to table[images[idx]][:, None]."""
    M, H, W = check_array("images", images, (None, None, None), np.uint8, contiguous=False).shape
    check_array("table", table, (256,), contiguous=False)
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ValueError(f"idx must be a 1-D integer array, got {idx.dtype} of shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= M):
        raise ValueError(f"idx has values outside 0..{M - 1}")
    out = _out("out", out, (idx.shape[0], 1, H, W), table.dtype)
    _k_lookup_batch(images, idx, table, out)
    return out


# --------------------------------------------------------------------------------------------
# zero padding
# --------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _k_pad(x, xp, P):
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
    out = _out("out", out, (N, C, H + 2 * pad, W + 2 * pad), x.dtype)
    _k_pad(x, out, pad)
    return out


# --------------------------------------------------------------------------------------------
# convolution: stride 1, zero padding P = K // 2 ("same"), cross-correlation like PyTorch
#   z[n,f,y,x] = b[f] + sum_{c,ky,kx} w[f,c,ky,kx] * xp[n,c,y+ky,x+kx]
# --------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _k_conv2d_forward(xp, w, b, z):
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
def _k_conv2d_backward_dx(dz, w, dxp):
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
def _k_conv2d_backward_dw(dz, xp, dw, db):
    # dz (N,F,H,W)   xp (N,C,Hp,Wp)   ->   dw (F,C,K,K), db (F,)
    # dw[f,c,ky,kx] = sum_{n,y,x} dz[n,f,y,x] * xp[n,c,y+ky,x+kx];  db[f] = sum_{n,y,x} dz[n,f,y,x]
    # partial sums are kept per output column x (a vector the compiler can use), then summed.
    # (The generic layer; the network's conv1 runs _k_conv32_backward_dw.)
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
    out = _out("out", out, (N, F, H, W), x.dtype)
    _k_conv2d_forward(xp, w, b, out)
    return out


def conv2d_forward_padded(xp, w, b, out=None):
    """Same as conv2d_forward on an input already zero-padded: xp (N,C,H+2P,W+2P) -> z (N,F,H,W)."""
    check_array("xp", xp, (None, None, None, None), contiguous=False)
    F, C, K, _ = check_array("w", w, (None, xp.shape[1], None, None), xp.dtype).shape
    check_array("b", b, (F,), xp.dtype)
    N, _, Hp, Wp = xp.shape
    out = _out("out", out, (N, F, Hp - K + 1, Wp - K + 1), xp.dtype)
    _k_conv2d_forward(xp, w, b, out)
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
    dw = _out("dw", dw, (F, C, K, K), x.dtype)
    db = _out("db", db, (F,), x.dtype)
    _k_conv2d_backward_dw(dz, xp, dw, db)
    dx = None
    if need_dx:
        dxp = _out("dxpad", dxpad, (N, C, H + 2 * pad, W + 2 * pad), x.dtype)
        _k_conv2d_backward_dx(dz, w, dxp)
        dx = dxp[:, :, pad:pad + H, pad:pad + W]
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# max pooling 2x2, stride 2. argmax = 2*dy + dx of the winner in its window; ties -> first maximum
# --------------------------------------------------------------------------------------------

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
def _k_maxpool2x2_forward(a, out, arg):
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
def _k_maxpool2x2_backward(dout, arg, da):
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
    out = _out("out", out, (N, C, H // 2, W // 2), a.dtype)
    argmax = _out("argmax", argmax, (N, C, H // 2, W // 2), np.int8)
    _k_maxpool2x2_forward(a, out, argmax)
    return out, argmax


def maxpool2x2_backward(dout, argmax, out=None):
    """dout (N,C,H/2,W/2), argmax from the forward pass -> da (N,C,H,W)."""
    check_array("dout", dout, (None, None, None, None), contiguous=False)
    check_array("argmax", argmax, dout.shape, np.int8, contiguous=False)
    N, C, Ho, Wo = dout.shape
    out = _out("out", out, (N, C, 2 * Ho, 2 * Wo), dout.dtype)
    _k_maxpool2x2_backward(dout, argmax, out)
    return out


# --------------------------------------------------------------------------------------------
# ELU: a = z (z >= 0), exp(z) - 1 (z < 0).  da/dz = 1 (a > 0), a + 1 (a <= 0): needs only a.
# exp(z) - 1 is _expm1_neg below, not math.expm1: that is a libm call per value (~12-15 ns, a
# branch the data decides), which made real images (half the pooled maxima negative) train
# slower than the bench's random ones. _expm1_neg is branch-free arithmetic in the value's own
# dtype that LLVM vectorizes (1.5 ns per float32 value whatever the sign), within 2 ulp of libm in
# float64 and 1 ulp in float32, checked by tests/test_kernels.py over the whole negative range.
# --------------------------------------------------------------------------------------------

_LN2_HI = 6.93147180369123816490e-01   # ln 2 split as in fdlibm: k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_F = np.float32                         # float32 constants keep the float32 version in float32 (8 lanes)
_LN2_HI32, _LN2_LO32, _INV_LN2_32 = _F(6.9314575195e-01), _F(1.4286067653e-06), _F(1.4426950216e+00)
_C32 = tuple(_F(1.0 / math.factorial(i)) for i in range(1, 10))
_LIM32, _HALF32, _ONE32 = _F(-18.0), _F(0.5), _F(1.0)


def _expm1_neg(v):
    """expm1(v) for v <= 0; under numba, the float32/float64 versions below (a select, no call)."""
    return math.expm1(v)


@njit(inline="always")
def _expm1_neg64(v):
    # v = k ln2 + r, |r| <= ln2/2 (Cody-Waite); expm1(r) by Taylor to r^13 (error < 1e-17);
    # expm1(v) = (2^k - 1) + 2^k expm1(r), 2^k built from its exponent bits (simd.float_from_bits;
    # before, a product of 6 factors 1 or 2^-(2^b) chosen by the bits of -k: the same value, 1.5x slower).
    # Below -40 the result rounds to -1; NaN stays NaN (np.maximum). No branches, no calls, no
    # conditional expressions (numba's IR inliner warns on those): loops over it vectorize.
    t = np.maximum(v, -40.0)
    k = np.floor(t * _INV_LN2 + 0.5)                 # in [-58, 0]; np.floor stays a float
    r = (t - k * _LN2_HI) - k * _LN2_LO
    q = r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720 + r * (
        1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800 + r * (1.0 / 39916800 + r * (
            1.0 / 479001600 + r * (1.0 / 6227020800)))))))))))))
    s = float_from_bits((np.int64(1023) + np.int64(k)) << 52)   # 2^k exactly (k >= -58: normal)
    return (s - 1.0) + s * q


@njit(inline="always")
def _expm1_neg32(v):
    # the same in float32 (fdlibm expf's ln 2 split): Taylor to r^9, k in [-26, 0], -1 below -18
    c1, c2, c3, c4, c5, c6, c7, c8, c9 = _C32
    t = np.maximum(v, _LIM32)
    k = np.floor(t * _INV_LN2_32 + _HALF32)
    r = (t - k * _LN2_HI32) - k * _LN2_LO32
    q = r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * (c7 + r * (c8 + r * c9))))))))
    s = float_from_bits(np.int32(np.int32(_F(127) + k) << 23))  # 2^k exactly (k >= -26: normal);
    # the outer np.int32: numba widens int32 arithmetic to int64, which would make s a float64
    return (s - _ONE32) + s * q


@overload(_expm1_neg, inline="always")
def _expm1_neg_numba(v):
    if v == types.float32:
        return lambda v: _expm1_neg32(v)
    return lambda v: _expm1_neg64(float(v))


@njit(inline="always")
def _elu(v):
    # ELU of one value. exp is computed for every value and the sign picks (a select, not a
    # branch), so loops over it vectorize: 1.95 ns a value instead of 2.87 with the call inside
    # the `else`.
    e = _expm1_neg(v)
    return v if v >= 0 else e


@njit(inline="always")
def _elu_rows(a):
    # a (R,L) in place: ELU of every value
    for r in range(a.shape[0]):
        for i in range(a.shape[1]):
            a[r, i] = _elu(a[r, i])


@njit(cache=True, parallel=True, nogil=True)
def _k_elu_forward(z, a):
    # z (D,) flat   ->   a (D,)
    for i in prange(z.shape[0]):
        a[i] = _elu(z[i])


@njit(cache=True, parallel=True, nogil=True)
def _k_elu_backward(da, a, dz):
    # da (D,), a (D,) forward output   ->   dz (D,)
    for i in prange(da.shape[0]):
        v = a[i]
        dz[i] = da[i] if v > 0 else da[i] * (v + 1)


def elu_forward(z, out=None):
    """Elementwise ELU (alpha = 1) of a C-contiguous array of any shape; out may alias z."""
    check_array("z", z, (None,) * z.ndim if isinstance(z, np.ndarray) else (None,))
    out = _out("out", out, z.shape, z.dtype)
    _k_elu_forward(z.reshape(-1), out.reshape(-1))
    return out


def elu_backward(da, a, out=None):
    """Gradient of ELU from its output a: da (any shape), a (same) -> dz; out may alias da."""
    check_array("da", da, (None,) * da.ndim if isinstance(da, np.ndarray) else (None,))
    check_array("a", a, da.shape, da.dtype)
    out = _out("out", out, da.shape, da.dtype)
    _k_elu_backward(da.reshape(-1), a.reshape(-1), out.reshape(-1))
    return out


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
def _k_bn_unit_forward(z, gamma, beta, eps, y, xhat, mean, var, invstd):
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
def _k_bn_unit_backward(dy, xhat, gamma, invstd, dz, dgamma, dbeta):
    # dy (N,D) xhat (N,D) gamma (D,) invstd (D,)  ->  dz (N,D), dgamma (D,), dbeta (D,)
    # rows sliced to the block as in _k_bn_unit_forward
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
def _k_bn_channel_forward(z, gamma, beta, eps, y, xhat, mean, var, invstd):
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
def _k_bn_channel_backward(dy, xhat, gamma, invstd, dz, dgamma, dbeta):
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
def _k_affine_channel(z, scale, shift, y):
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
    y = _out("y", y, z.shape, z.dtype)
    xhat = _out("xhat", xhat, z.shape, z.dtype)
    mean = _out("mean", mean, stat_shape, z.dtype)
    var = _out("var", var, stat_shape, z.dtype)
    invstd = _out("invstd", invstd, stat_shape, z.dtype)
    return y, xhat, mean, var, invstd


def bn_unit_forward(z, gamma, beta, eps=1e-5, out=None):
    """Per-unit BN over the batch: z (N,D), gamma (D,), beta (D,) -> (y, xhat, mean, var, invstd).

    `out` may be a 5-tuple of preallocated arrays (y (N,D), xhat (N,D), mean, var, invstd (D,)).
    """
    N, D = check_array("z", z, (None, None)).shape
    check_array("gamma", gamma, (D,), z.dtype)
    check_array("beta", beta, (D,), z.dtype)
    res = _bn_outputs(z, (D,), out)
    _k_bn_unit_forward(z, gamma, beta, eps, *res)
    return res


def bn_unit_backward(dy, xhat, gamma, invstd, out=None):
    """Gradients of bn_unit_forward: dy (N,D), xhat (N,D), gamma (D,), invstd (D,) -> (dz, dgamma, dbeta)."""
    N, D = check_array("dy", dy, (None, None)).shape
    check_array("xhat", xhat, (N, D), dy.dtype)
    check_array("gamma", gamma, (D,), dy.dtype)
    check_array("invstd", invstd, (D,), dy.dtype)
    dz, dgamma, dbeta = (None,) * 3 if out is None else out
    dz = _out("dz", dz, (N, D), dy.dtype)
    dgamma = _out("dgamma", dgamma, (D,), dy.dtype)
    dbeta = _out("dbeta", dbeta, (D,), dy.dtype)
    _k_bn_unit_backward(dy, xhat, gamma, invstd, dz, dgamma, dbeta)
    return dz, dgamma, dbeta


def bn_channel_forward(z, gamma, beta, eps=1e-5, out=None):
    """Per-channel BN: z (N,C,S) (S = H*W), gamma (C,), beta (C,) -> (y, xhat, mean, var, invstd)."""
    N, C, S = check_array("z", z, (None, None, None)).shape
    check_array("gamma", gamma, (C,), z.dtype)
    check_array("beta", beta, (C,), z.dtype)
    res = _bn_outputs(z, (C,), out)
    _k_bn_channel_forward(z, gamma, beta, eps, *res)
    return res


def bn_channel_backward(dy, xhat, gamma, invstd, out=None):
    """Gradients of bn_channel_forward: dy (N,C,S), xhat, gamma (C,), invstd (C,) -> (dz, dgamma, dbeta)."""
    N, C, S = check_array("dy", dy, (None, None, None)).shape
    check_array("xhat", xhat, (N, C, S), dy.dtype)
    check_array("gamma", gamma, (C,), dy.dtype)
    check_array("invstd", invstd, (C,), dy.dtype)
    dz, dgamma, dbeta = (None,) * 3 if out is None else out
    dz = _out("dz", dz, (N, C, S), dy.dtype)
    dgamma = _out("dgamma", dgamma, (C,), dy.dtype)
    dbeta = _out("dbeta", dbeta, (C,), dy.dtype)
    _k_bn_channel_backward(dy, xhat, gamma, invstd, dz, dgamma, dbeta)
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
    _k_bn_fold(gamma, beta, running_mean, running_var, z.dtype.type(eps), scale, shift)
    out = _out("out", out, z.shape, z.dtype)
    _k_affine_channel(z, scale, shift, out)
    return out


# --------------------------------------------------------------------------------------------
# fully connected: z = x @ w.T + b  (BLAS through numpy; deterministic for fixed shapes)
# --------------------------------------------------------------------------------------------

def fc_forward(x, w, b, out=None):
    """x (N,I), w (O,I), b (O,) -> z (N,O)."""
    N, I = check_array("x", x, (None, None), contiguous=False).shape
    O = check_array("w", w, (None, I), x.dtype).shape[0]
    check_array("b", b, (O,), x.dtype)
    out = _out("out", out, (N, O), x.dtype)
    np.matmul(x, w.T, out=out)
    out += b
    return out


def fc_backward(dz, x, w, need_dx=True, dx=None, dw=None, db=None):
    """Gradients of fc_forward: dz (N,O), x (N,I), w (O,I) -> (dx (N,I) or None, dw (O,I), db (O,))."""
    N, I = check_array("x", x, (None, None), contiguous=False).shape
    O = check_array("w", w, (None, I), x.dtype).shape[0]
    check_array("dz", dz, (N, O), x.dtype, contiguous=False)
    dw = _out("dw", dw, (O, I), x.dtype)
    db = _out("db", db, (O,), x.dtype)
    np.matmul(dz.T, x, out=dw)
    np.sum(dz, axis=0, out=db)
    if need_dx:
        dx = _out("dx", dx, (N, I), x.dtype)
        np.matmul(dz, w, out=dx)
    else:
        dx = None
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# output: sigmoid + binary cross-entropy against one-hot targets, from the logits (stable)
#   loss = (1/N) sum_n sum_c [ max(z,0) - z*y + log1p(exp(-|z|)) ];  dz = (sigmoid(z) - y) / N
# --------------------------------------------------------------------------------------------

@njit(inline="always")
def _logistic(v):
    # 1 / (1 + exp(-v)) without overflow for either sign of v
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@njit(cache=True, nogil=True)
def _k_sigmoid_bce(z, labels, probs, dz):
    # z (N,O) logits, labels (N,) int   ->   probs (N,O), dz (N,O); returns the mean loss (float64)
    N, O = z.shape
    total = 0.0
    for n in range(N):
        lab = labels[n]
        for c in range(O):
            v = z[n, c]
            t = 1.0 if lab == c else 0.0
            total += max(v, 0.0) - v * t + math.log1p(math.exp(-abs(v)))
            p = _logistic(v)
            probs[n, c] = p
            dz[n, c] = (p - t) / N
    return total / N


@njit(cache=True)
def _k_sigmoid(z, probs):
    # z (N,O)   ->   probs (N,O)
    N, O = z.shape
    for n in range(N):
        for c in range(O):
            probs[n, c] = _logistic(z[n, c])


def check_labels(labels, n, num_classes):
    """labels must be an integer array (n,) with values in [0, num_classes)."""
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}, expected ({n},)")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels has dtype {labels.dtype} (shape {labels.shape}), expected an integer dtype")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels (shape {labels.shape}) has values outside [0, {num_classes}): "
                         f"min {labels.min()}, max {labels.max()}")
    return labels


def sigmoid_bce_forward_backward(z, labels, probs=None, dz=None):
    """z (N,O) logits, labels (N,) in [0,O) -> (mean loss, probs (N,O), dz (N,O))."""
    N, O = check_array("z", z, (None, None)).shape
    check_labels(labels, N, O)
    probs = _out("probs", probs, (N, O), z.dtype)
    dz = _out("dz", dz, (N, O), z.dtype)
    loss = _k_sigmoid_bce(z, labels.astype(np.int64, copy=False), probs, dz)
    return float(loss), probs, dz


def sigmoid(z, out=None):
    """Stable elementwise logistic function of z (N,O)."""
    check_array("z", z, (None, None))
    out = _out("out", out, z.shape, z.dtype)
    _k_sigmoid(z, out)
    return out


# --------------------------------------------------------------------------------------------
# fast path used by model.Network (each checked against the plain layers above in the tests)
# --------------------------------------------------------------------------------------------
# conv2 (C = 6 -> F = 16 maps of 16 x 16, K = 5): direct convolution in 16-lane vectors
# (cnncli.simd). One output row is one vector; each kernel keeps a tile of accumulator vectors
# in registers and adds one fused multiply-add (vfma) per (input row segment, weight):
#   forward   z[n,f,y,:]  = sum_{c,ky,kx} w[f,c,ky,kx] * xp[n,c,y+ky,kx:kx+16]      4 maps x 1 row
#   input     dx[n,c,y,:] = sum_{f,a,b} w[f,c,4-a,4-b] * dzp[n,f,y+a,b:b+16]         6 maps x 1 row
#             (dzp = dz zero-padded by 2: the input gradient is the "full" correlation of dz
#             with the flipped filters)
#   weights   dw[:,c,ky,kx] = sum_{n,y,x} dz[n,:,y,x] * xp[n,c,y+ky,x+kx]           16 maps x 5 kx
#             (the 16 maps are the lanes: dz transposed to one vector per position first)
# One thread, float32, chunk of 8 images: forward 111 us (89 GFLOP/s) vs 192-237 us for im2col +
# OpenBLAS sgemm; input gradient 109 vs 218 us (sgemm + col2im); weight gradient 122 us (80
# GFLOP/s) vs 230 us (im2col + sgemm) and 178 us for a first kernel with x in the lanes (2 maps x
# 3 kx tiles, 55 GFLOP/s: two unaligned loads per FMA pair). The kernels run per chunk of images
# on model.py's worker threads (nogil); every output element is summed in a fixed order, so the
# bits do not depend on threads. The tiles repeat one line per accumulator on purpose: each
# accumulator must be its own variable for LLVM to keep it in a register.

@njit(inline="always")
def _conv16_image(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,20,20), w (F,C,5,5)   ->   z from flat offset zo
    # (F,16,16), no bias. F % 4 == 0.
    F, C = w.shape[0], w.shape[1]
    for fb in range(0, F, 4):
        for y in range(16):
            a0 = vzero(z)
            a1 = vzero(z)
            a2 = vzero(z)
            a3 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 20 + y + ky) * 20
                    for kx in range(5):
                        v = vload(xp, r + kx)
                        a0 = vfma(vsplat(w[fb, c, ky, kx]), v, a0)
                        a1 = vfma(vsplat(w[fb + 1, c, ky, kx]), v, a1)
                        a2 = vfma(vsplat(w[fb + 2, c, ky, kx]), v, a2)
                        a3 = vfma(vsplat(w[fb + 3, c, ky, kx]), v, a3)
            o = zo + (fb * 16 + y) * 16
            vstore(z, o, a0)
            vstore(z, o + 256, a1)
            vstore(z, o + 512, a2)
            vstore(z, o + 768, a3)


@njit(cache=True, nogil=True)
def _k_conv16_forward(xp, w, z):
    # xp (N,C,20,20) padded input, w (F,C,5,5)   ->   z (N,F,16,16), no bias
    N, F = z.shape[0], z.shape[1]
    C = xp.shape[1]
    for n in range(N):
        _conv16_image(xp, n * C * 400, w, z, n * F * 256)


@njit(cache=True, nogil=True)
def _k_conv16_backward_dx(dz, w, dzp, dx):
    # dz (N,F,16,16), w (F,6,5,5), dzp (N,F,20,20) scratch with a zero border (only its interior
    # is written)   ->   dx (N,6,16,16) gradient w.r.t. the unpadded input
    N, F = dz.shape[0], dz.shape[1]
    for n in range(N):
        for f in range(F):
            for y in range(16):
                vstore(dzp, ((n * F + f) * 20 + y + 2) * 20 + 2, vload(dz, ((n * F + f) * 16 + y) * 16))
        for y in range(16):
            a0 = vzero(dx)
            a1 = vzero(dx)
            a2 = vzero(dx)
            a3 = vzero(dx)
            a4 = vzero(dx)
            a5 = vzero(dx)
            for f in range(F):
                for a in range(5):
                    r = ((n * F + f) * 20 + y + a) * 20
                    for b in range(5):
                        v = vload(dzp, r + b)
                        a0 = vfma(vsplat(w[f, 0, 4 - a, 4 - b]), v, a0)
                        a1 = vfma(vsplat(w[f, 1, 4 - a, 4 - b]), v, a1)
                        a2 = vfma(vsplat(w[f, 2, 4 - a, 4 - b]), v, a2)
                        a3 = vfma(vsplat(w[f, 3, 4 - a, 4 - b]), v, a3)
                        a4 = vfma(vsplat(w[f, 4, 4 - a, 4 - b]), v, a4)
                        a5 = vfma(vsplat(w[f, 5, 4 - a, 4 - b]), v, a5)
            o = (n * 6 * 16 + y) * 16
            vstore(dx, o, a0)
            vstore(dx, o + 256, a1)
            vstore(dx, o + 512, a2)
            vstore(dx, o + 768, a3)
            vstore(dx, o + 1024, a4)
            vstore(dx, o + 1280, a5)


@njit(cache=True, nogil=True)
def _k_conv16_backward_dw(dz, xp, dzt, dwt):
    # dz (N,16,16,16), xp (N,C,20,20) padded input, dzt (N,256,16) scratch   ->   dwt (C,5,5,16)
    # overwritten: the weight gradient with the map index LAST (the caller transposes).
    # The 16 maps are the lanes: dz is first transposed to one 16-map vector per position, then
    # each (c, ky) tile of 5 accumulators (kx = 0..4) gets, per position, one vector load and five
    # FMAs with a splatted input value. Each lane sums its positions in order (no lane sum).
    N, F = dz.shape[0], dz.shape[1]
    C = xp.shape[1]
    for n in range(N):
        for f in range(F):
            for p in range(256):
                dzt[n, p, f] = dz[n, f, p // 16, p % 16]
    for c in range(C):
        for ky in range(5):
            a0 = vzero(dz)
            a1 = vzero(dz)
            a2 = vzero(dz)
            a3 = vzero(dz)
            a4 = vzero(dz)
            for n in range(N):
                for y in range(16):
                    for x in range(16):
                        d = vload(dzt, (n * 256 + y * 16 + x) * 16)
                        a0 = vfma(d, vsplat(xp[n, c, y + ky, x]), a0)
                        a1 = vfma(d, vsplat(xp[n, c, y + ky, x + 1]), a1)
                        a2 = vfma(d, vsplat(xp[n, c, y + ky, x + 2]), a2)
                        a3 = vfma(d, vsplat(xp[n, c, y + ky, x + 3]), a3)
                        a4 = vfma(d, vsplat(xp[n, c, y + ky, x + 4]), a4)
            o = (c * 5 + ky) * 80
            vstore(dwt, o, a0)
            vstore(dwt, o + 16, a1)
            vstore(dwt, o + 32, a2)
            vstore(dwt, o + 48, a3)
            vstore(dwt, o + 64, a4)


# conv1 (C = 1 -> F = 6 maps of 32 x 32): the same with two vectors per row.
#   forward   6 maps x half a row per tile (one load, six FMAs per weight position)
#   weights   one map x 5 kx per tile for each ky, both halves of a row into the same lanes;
#             the bias gradient is a lane sum too
# 64 images, one thread, float32: forward 245-251 us vs 644-652 for the wide-row kernel it
# replaced; weight gradient 457-474 us vs 821-842 (_k_conv2d_backward_dw), and for 128 images
# 741-768 us image by image vs 968-1,113 us streaming the batch once per (map, ky).

@njit(inline="always")
def _conv32_image(xp, xo, w, z, zo):
    # one image: xp from flat offset xo (C,36,36), w (6,C,5,5)   ->   z from flat offset zo
    # (6,32,32), no bias
    C = w.shape[1]
    for y in range(32):
        for h in range(0, 32, 16):
            a0 = vzero(z)
            a1 = vzero(z)
            a2 = vzero(z)
            a3 = vzero(z)
            a4 = vzero(z)
            a5 = vzero(z)
            for c in range(C):
                for ky in range(5):
                    r = xo + (c * 36 + y + ky) * 36 + h
                    for kx in range(5):
                        v = vload(xp, r + kx)
                        a0 = vfma(vsplat(w[0, c, ky, kx]), v, a0)
                        a1 = vfma(vsplat(w[1, c, ky, kx]), v, a1)
                        a2 = vfma(vsplat(w[2, c, ky, kx]), v, a2)
                        a3 = vfma(vsplat(w[3, c, ky, kx]), v, a3)
                        a4 = vfma(vsplat(w[4, c, ky, kx]), v, a4)
                        a5 = vfma(vsplat(w[5, c, ky, kx]), v, a5)
            o = zo + y * 32 + h
            vstore(z, o, a0)
            vstore(z, o + 1024, a1)
            vstore(z, o + 2048, a2)
            vstore(z, o + 3072, a3)
            vstore(z, o + 4096, a4)
            vstore(z, o + 5120, a5)


@njit(cache=True, parallel=True, nogil=True)
def _k_conv32_forward(xp, w, z):
    # xp (N,C,36,36) padded input, w (6,C,5,5)   ->   z (N,6,32,32), no bias
    N, C = xp.shape[0], xp.shape[1]
    for n in prange(N):                      # each image: writes z[n] only
        _conv32_image(xp, n * C * 1296, w, z, n * 6 * 1024)


@njit(cache=True, parallel=True, nogil=True)
def _k_conv32_backward_dw(dz, xp, dw, db):
    # dz (N,F,32,32), xp (N,1,36,36) padded input   ->   dw (F,1,5,5), db (F,) overwritten
    # Image by image: the five ky tiles reuse one image's rows from L1; the tile's partial sums
    # go back to `acc` between images (each lane still sums over n, y, half in order).
    N, F = dz.shape[0], dz.shape[1]
    for f in prange(F):                      # each map: writes dw[f], db[f] only
        acc = np.zeros((5, 5, 16), dz.dtype)   # (ky, kx, lane) partial sums
        s = vzero(dz)
        for n in range(N):
            for ky in range(5):
                o = ky * 80
                a0 = vload(acc, o)
                a1 = vload(acc, o + 16)
                a2 = vload(acc, o + 32)
                a3 = vload(acc, o + 48)
                a4 = vload(acc, o + 64)
                for y in range(32):
                    for h in range(0, 32, 16):
                        d = vload(dz, ((n * F + f) * 32 + y) * 32 + h)
                        ox = (n * 36 + y + ky) * 36 + h
                        a0 = vfma(d, vload(xp, ox), a0)
                        a1 = vfma(d, vload(xp, ox + 1), a1)
                        a2 = vfma(d, vload(xp, ox + 2), a2)
                        a3 = vfma(d, vload(xp, ox + 3), a3)
                        a4 = vfma(d, vload(xp, ox + 4), a4)
                vstore(acc, o, a0)
                vstore(acc, o + 16, a1)
                vstore(acc, o + 32, a2)
                vstore(acc, o + 48, a3)
                vstore(acc, o + 64, a4)
            for y in range(32):
                for h in range(0, 32, 16):
                    s = vadd(s, vload(dz, ((n * F + f) * 32 + y) * 32 + h))
        for ky in range(5):
            for kx in range(5):
                dw[f, 0, ky, kx] = vhsum(vload(acc, (ky * 5 + kx) * 16))
        db[f] = vhsum(s)


def _check_conv16(xp, w, C=None):
    N = check_array("xp", xp, (None, C, 20, 20)).shape[0]
    F = check_array("w", w, (None, xp.shape[1], 5, 5), xp.dtype).shape[0]
    if F % 4:
        raise ValueError(f"w has shape {w.shape}: the 16-wide kernels need a multiple of 4 filters")
    return N, F


def conv16_forward(xp, w, out=None):
    """conv2's forward: xp (N,C,20,20) zero-padded input, w (F,C,5,5) -> z (N,F,16,16), no bias."""
    N, F = _check_conv16(xp, w)
    out = _out("out", out, (N, F, 16, 16), xp.dtype)
    _k_conv16_forward(xp, w, out)
    return out


def conv16_backward(dz, xp, w, need_dx=True):
    """Gradients of conv16_forward: dz (N,16,16,16) -> (dx (N,6,16,16) or None, dw (16,C,5,5)).
    Written for conv2's 16 maps (the weight gradient's lanes) and 6 input maps (the input's)."""
    N, F = _check_conv16(xp, w, C=6 if need_dx else None)
    check_array("dz", dz, (N, F, 16, 16), xp.dtype)
    if F != 16:
        raise ValueError(f"w has shape {w.shape}: the weight-gradient kernel needs 16 filters (its lanes)")
    dwt = np.empty((xp.shape[1], 5, 5, 16), xp.dtype)
    _k_conv16_backward_dw(dz, xp, np.empty((N, 256, 16), xp.dtype), dwt)
    dw = np.ascontiguousarray(dwt.transpose(3, 0, 1, 2))
    dx = None
    if need_dx:
        dx = np.empty((N, 6, 16, 16), xp.dtype)
        _k_conv16_backward_dx(dz, w, np.zeros((N, F, 20, 20), xp.dtype), dx)
    return dx, dw


@njit(cache=True, parallel=True)
def _k_add_bias(z, b):
    # z (N,F,S) += b (F,) per map, in place
    N, F, S = z.shape
    for n in prange(N):
        for f in range(F):
            bv = b[f]
            for i in range(S):
                z[n, f, i] += bv


@njit(inline="always")
def _pool_plane(z, bv, pp, o, arg, n, c, Ho, Wo):
    # one (n, c) plane of _k_pool_elu_forward before the ELU: pp[.., o+i, o+j] = window max + bv, arg
    for i in range(Ho):
        for j in range(Wo):
            best, k = _window_max(z, n, c, i, j)
            pp[n, c, o + i, o + j] = best + bv
            arg[n, c, i, j] = k


@njit(inline="always")
def _unpool_plane(dp, pp, o, arg, dz, n, c, Ho, Wo):
    # one (n, c) plane of _k_pool_elu_backward; v + 1 in the array's dtype, as the vectors do
    # (with the int literal 1, numba computed it in float64 for float32 arrays)
    one = dz.dtype.type(1)
    for i in range(Ho):
        for j in range(Wo):
            v = pp[n, c, o + i, o + j]
            g = dp[n, c, i, j] if v > 0 else dp[n, c, i, j] * (v + one)
            _window_route(g, arg[n, c, i, j], dz, n, c, i, j)


# The network's two pooling shapes in 16-lane vectors (cnncli.simd): 16 windows at a time, their
# four positions gathered by even/odd lane shuffles of the input rows, the scalar comparisons
# above as lane selects (same order, same ties, same NaN behaviour: the same bits; the
# positions travel as small whole floats). conv1: 32-wide rows -> 16 windows of one output row;
# conv2: 16-wide rows, two output rows of 8 windows (pp without a border, o = 0).

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
            best, k = _window_max_v(veven(v0, v1), vodd(v0, v1), veven(v2, v3), vodd(v2, v3), pos)
            vstore(pp, ((n * C + c) * Hq + o + i) * Wq + o, vadd(best, b16))
            vstore_i8(arg, (n * C + c) * 256 + i * 16, k)
    else:
        for i in range(0, 8, 2):
            r = (n * C + c) * 256 + i * 32                   # input rows 2i .. 2i+3
            v0, v1, v2, v3 = vload(z, r), vload(z, r + 16), vload(z, r + 32), vload(z, r + 48)
            best, k = _window_max_v(veven(v0, v2), vodd(v0, v2), veven(v1, v3), vodd(v1, v3), pos)
            vstore(pp, (n * C + c) * 64 + i * 8, vadd(best, b16))
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


@njit(cache=True, parallel=True, nogil=True)
def _k_pool_elu_forward(z, b, pp, o, arg):
    # z (N,C,H,W) pre-activation, b (C,) bias added here   ->   pp (N,C,H/2+2o,W/2+2o) C-contiguous,
    # whose interior pp[:, :, o:-o, o:-o] (all of it when o = 0) gets p = ELU(max window + b) and
    # whose border must be 0 (stays 0 = ELU(0): o = 2 writes conv2's zero-padded input directly);
    # arg (N,C,H/2,W/2) int8. Same as maxpool(ELU(z + b)): ELU is increasing, so it commutes with
    # max (ties stay ties), and it now runs on a quarter of the values.
    # The ELU runs as a second pass over each image's whole contiguous pp[n], where it vectorizes
    # (rows of 16 or 8 did not). The network's two shapes run in vectors (_pool_plane_v).
    # Every array C-contiguous.
    N, C, Ho, Wo = arg.shape
    Hq, Wq = pp.shape[2], pp.shape[3]
    for n in prange(N):
        for c in range(C):
            if Ho == 16 and Wo == 16:
                _pool_plane_v(z, b[c], pp, o, arg, n, c, 32)
            elif Ho == 8 and Wo == 8 and o == 0:
                _pool_plane_v(z, b[c], pp, o, arg, n, c, 16)
            else:
                _pool_plane(z, b[c], pp, o, arg, n, c, Ho, Wo)
        _elu_rows(pp[n].reshape((1, C * Hq * Wq)))     # (a sliced run of each plane was 3x slower)


@njit(cache=True, parallel=True, nogil=True)
def _k_pool_elu_backward(dp, pp, o, arg, dz):
    # dp (N,C,H/2,W/2) gradient of p, pp holding p as _k_pool_elu_forward wrote it (offset o), arg
    #   ->   dz (N,C,H,W): dp * ELU'(winner) at the winner of each window (ELU' = 1 if p > 0 else
    # p + 1), 0 elsewhere. Every array C-contiguous.
    N, C, Ho, Wo = dp.shape
    for n in prange(N):
        for c in range(C):
            if Ho == 16 and Wo == 16:
                _unpool_plane_v(dp, pp, o, arg, dz, n, c, 32)
            elif Ho == 8 and Wo == 8 and o == 0:
                _unpool_plane_v(dp, pp, o, arg, dz, n, c, 16)
            else:
                _unpool_plane(dp, pp, o, arg, dz, n, c, Ho, Wo)


def pool_elu_forward(z, b, out=None, argmax=None):
    """Fused maxpool2x2(ELU(z + b)): z (N,C,H,W), b (C,) -> (p (N,C,H/2,W/2), argmax int8);
    an `out` given must be C-contiguous (the ELU runs over it as one flat run)."""
    N, C, H, W = check_array("z", z, (None, None, None, None), contiguous=False).shape
    check_array("b", b, (C,), z.dtype)
    if H % 2 or W % 2:
        raise ValueError(f"z has shape {z.shape}: height and width must be even for 2x2 pooling")
    out = _out("out", out, (N, C, H // 2, W // 2), z.dtype)
    if not out.flags.c_contiguous:
        raise ValueError(f"out (shape {out.shape}) must be C-contiguous")
    argmax = _out("argmax", argmax, (N, C, H // 2, W // 2), np.int8)
    _k_pool_elu_forward(np.ascontiguousarray(z), b, out, 0, argmax)
    return out, argmax


def pool_elu_backward(dp, p, argmax, out=None):
    """Gradient of pool_elu_forward w.r.t. z: dp, p, argmax (N,C,H/2,W/2) -> dz (N,C,H,W)."""
    N, C, Ho, Wo = check_array("dp", dp, (None, None, None, None), contiguous=False).shape
    check_array("p", p, dp.shape, dp.dtype, contiguous=False)
    check_array("argmax", argmax, dp.shape, np.int8, contiguous=False)
    out = _out("out", out, (N, C, 2 * Ho, 2 * Wo), dp.dtype)
    c = np.ascontiguousarray
    _k_pool_elu_backward(c(dp), c(p), 0, c(argmax), out)
    return out



def conv32_forward(xp, w, out=None):
    """conv1's forward: xp (N,C,36,36) zero-padded input, w (6,C,5,5) -> z (N,6,32,32), no bias."""
    N = check_array("xp", xp, (None, None, 36, 36)).shape[0]
    check_array("w", w, (6, xp.shape[1], 5, 5), xp.dtype)
    out = _out("out", out, (N, 6, 32, 32), xp.dtype)
    _k_conv32_forward(xp, w, out)
    return out


def conv32_backward_dw(dz, xp):
    """Weight and bias gradients of conv1 (one input map): dz (N,F,32,32), xp (N,1,36,36) -> (dw, db)."""
    N = check_array("xp", xp, (None, 1, 36, 36)).shape[0]
    F = check_array("dz", dz, (N, None, 32, 32), xp.dtype).shape[1]
    dw = np.empty((F, 1, 5, 5), xp.dtype)
    db = np.empty(F, xp.dtype)
    _k_conv32_backward_dw(dz, xp, dw, db)
    return dw, db

# --------------------------------------------------------------------------------------------
# inference path (model.Network.predict_proba): the conv part of the whole net, image by image
# --------------------------------------------------------------------------------------------
# One image at a time, every intermediate in small per-image buffers that stay in L1/L2:
#   conv (_conv32_image, _conv16_image: the training path's 16-lane kernels)
#   -> +bias -> *scale + shift (BN folded; 1 and 0 without BN)
#   -> max of each 2x2 window, written straight into the next layer's padded input -> ELU (one
#   vectorized pass over that buffer; ELU(0) = 0 keeps the zero border).
# Each image is independent, so results are the same for any batch size or thread count.
# Inference only (no argmax, no caches), tested against a NumPy reference of the inference-mode
# network (tests/test_model.py) and the PyTorch twin.

@njit(inline="always")
def _pool_affine(d, W, bias, scale, shift, i, j):
    # d (H*W,) one conv map; scale/shift (U,) with U = H*W (per unit) or 1 (per map)
    #   ->   max over the 2x2 window (i,j) of (d + bias) * scale + shift (the caller applies the ELU)
    q = 2 * i * W + 2 * j
    per_unit = scale.shape[0] > 1
    u = 2 * i * W + 2 * j if per_unit else 0
    du = 1 if per_unit else 0
    dv = W if per_unit else 0
    best = (d[q] + bias) * scale[u] + shift[u]
    v = (d[q + 1] + bias) * scale[u + du] + shift[u + du]
    if v > best:
        best = v
    v = (d[q + W] + bias) * scale[u + dv] + shift[u + dv]
    if v > best:
        best = v
    v = (d[q + W + 1] + bias) * scale[u + dv + du] + shift[u + dv + du]
    if v > best:
        best = v
    return best


@njit(inline="always")
def _infer_image(x, n, w1, b1, sc1, sh1, w2, b2, sc2, sh2, flat):
    # x (N,1,32,32) image n   ->   flat[n] (1024,) = ELU(pool(bn2(conv2(ELU(pool(bn1(conv1 x))))))))
    xp = np.zeros((1, 36 * 36), x.dtype)             # (1, 36*36) padded input
    for y in range(32):
        for xx in range(32):
            xp[0, (y + 2) * 36 + xx + 2] = x[n, 0, y, xx]
    z1 = np.empty((6, 32 * 32), x.dtype)             # (6, 32*32) conv1 output
    _conv32_image(xp, 0, w1, z1, 0)
    p1 = np.zeros((6, 20 * 20), x.dtype)             # (6, 20*20) padded conv2 input
    for f in range(6):
        for i in range(16):
            for j in range(16):
                p1[f, (i + 2) * 20 + j + 2] = _pool_affine(z1[f], 32, b1[f], sc1[f], sh1[f], i, j)
    _elu_rows(p1)                                    # the zero border stays 0 = ELU(0)
    z2 = np.empty((16, 16 * 16), x.dtype)            # (16, 16*16) conv2 output (16-lane kernel)
    _conv16_image(p1, 0, w2, z2, 0)
    for f in range(16):
        for i in range(8):
            for j in range(8):
                flat[n, f * 64 + i * 8 + j] = _pool_affine(z2[f], 16, b2[f], sc2[f], sh2[f], i, j)
    _elu_rows(flat[n:n + 1])


@njit(cache=True, parallel=True)
def _k_infer_features(x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, flat):
    # x (N,1,32,32), w1 (6,1,5,5), b1 (6,), sc1/sh1 (6,U1), w2 (16,6,5,5), b2 (16,), sc2/sh2 (16,U2)
    #   ->   flat (N,1024): the C-order flattened input of fc1. U = H*W (unit BN) or 1.
    for n in prange(x.shape[0]):
        _infer_image(x, n, w1, b1, sc1, sh1, w2, b2, sc2, sh2, flat)


@njit(cache=True, error_model="numpy")
def _k_bn_fold(gamma, beta, running_mean, running_var, eps, scale, shift):
    # (D,) each, eps a scalar of their dtype   ->   scale = gamma / sqrt(var + eps), shift = beta - mean * scale
    # error_model="numpy": no ZeroDivisionError check per element (var + eps > 0), so LLVM vectorizes
    for i in range(gamma.shape[0]):
        scale[i] = gamma[i] / math.sqrt(running_var[i] + eps)
        shift[i] = beta[i] - running_mean[i] * scale[i]


@njit(inline="always")
def _infer_head_row(z3, n, b3, sc3, sh3, w4, b4, a, probs):
    # z3 (N,65) fc1 output without bias, row n   ->   probs[n] (C,) = sigmoid(fc2(ELU(bn3(z3[n] + b3))))
    for d in range(a.shape[0]):
        a[d] = _elu((z3[n, d] + b3[d]) * sc3[d] + sh3[d])
    for c in range(w4.shape[0]):
        v = b4[c]
        for d in range(a.shape[0]):
            v += w4[c, d] * a[d]
        probs[n, c] = _logistic(v)


@njit(cache=True)
def _k_infer_head(z3, b3, sc3, sh3, w4, b4, probs):
    # z3 (N,65) = flat @ fc1.w.T (no bias), b3 (65,), sc3/sh3 (65,), w4 (C,65), b4 (C,)
    #   ->   probs (N,C) = sigmoid(fc2(ELU(bn3(z3 + b3))))
    a = np.empty(z3.shape[1], z3.dtype)              # (65,) one image's fc1 activation
    for n in range(z3.shape[0]):
        _infer_head_row(z3, n, b3, sc3, sh3, w4, b4, a, probs)


@njit(cache=True)
def _k_infer_serial(x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, w3, b3, sc3, sh3, w4, b4, probs):
    # The whole inference pass for a few images in one call on the calling thread (no thread-pool
    # wake-up, no BLAS call): x (N,1,32,32), w3 (65,1024), the rest as above   ->   probs (N,C).
    # fc1 sums each dot product in 8 interleaved partial sums, then those in order: eight scalar
    # chains over blocks of 8 (plain range indices: no negative-index fix-ups), which the SLP
    # vectorizer turns into one 8-lane vector (8.7 us for 65 x 1024 instead of 28-40 us).
    N = x.shape[0]
    D, I = w3.shape
    J = I // 8
    flat = np.empty((N, I), x.dtype)                 # (N,1024)
    z3 = np.empty((N, D), x.dtype)                   # (N,65)
    a = np.empty(D, x.dtype)                         # (65,)
    wb = w3.reshape((D, J, 8))                       # (65,128,8) blocks of 8 inputs
    for n in range(N):
        _infer_image(x, n, w1, b1, sc1, sh1, w2, b2, sc2, sh2, flat)
        fb = flat[n].reshape((J, 8))                 # (128,8)
        for d in range(D):
            p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = x.dtype.type(0)
            for j in range(J):
                p0 += wb[d, j, 0] * fb[j, 0]
                p1 += wb[d, j, 1] * fb[j, 1]
                p2 += wb[d, j, 2] * fb[j, 2]
                p3 += wb[d, j, 3] * fb[j, 3]
                p4 += wb[d, j, 4] * fb[j, 4]
                p5 += wb[d, j, 5] * fb[j, 5]
                p6 += wb[d, j, 6] * fb[j, 6]
                p7 += wb[d, j, 7] * fb[j, 7]
            z3[n, d] = p0 + p1 + p2 + p3 + p4 + p5 + p6 + p7
        _infer_head_row(z3, n, b3, sc3, sh3, w4, b4, a, probs)


# --------------------------------------------------------------------------------------------
# optimizer: Adam/AdamW in one pass (optim.Optimizer uses it; its NumPy sequence is the reference)
# --------------------------------------------------------------------------------------------

@njit(inline="always")
def _adam_element(pi, gi, m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step):
    # moments m[i], v[i] updated in place   ->   the new parameter value
    mi = m[i] + (gi - m[i]) * one_m_b1
    vi = v[i] * b2 + (gi * gi) * one_m_b2
    m[i] = mi
    v[i] = vi
    return pi + (mi / ((np.sqrt(vi) / bias2_sqrt) + eps)) * neg_step


@njit(cache=True, nogil=True, error_model="numpy")
def _k_adam(p, g, m, v, decay, wd, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step):
    # p, g, m, v (P,) one flat buffer each; the scalars already in p's dtype. Per element, the same
    # operations in the same order as optim.Optimizer._adam_numpy's 14 NumPy passes (so the same
    # bits): decay = 1 - lr*wd (AdamW, else 1 and skipped), wd = L2 weight decay (Adam, else 0).
    # error_model="numpy" (IEEE division, no zero check) and one loop per case let it vectorize:
    # 40 us for 70k float32 parameters (the NumPy passes: 184 us).
    n = p.shape[0]
    if decay != 1:                          # AdamW: decoupled decay first
        for i in range(n):
            pi = p[i] * decay
            p[i] = _adam_element(pi, g[i], m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step)
    elif wd != 0:                           # Adam with L2: grad + wd * param
        for i in range(n):
            pi = p[i]
            p[i] = _adam_element(pi, g[i] + pi * wd, m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps,
                                 neg_step)
    else:
        for i in range(n):
            p[i] = _adam_element(p[i], g[i], m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step)
