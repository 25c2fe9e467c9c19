"""Activations: ELU (alpha = 1; forward, backward, and the inline per-value and 16-lane vector
forms the fused kernels use) and the logistic sigmoid. Not the loss (loss.py) nor the fused
pool+ELU (pool.py).

Shape legend: D values of a flat array, (N,O) logits.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .checks import check_array, check_out
from .simd import vadd, vfloor, vmul, vsplat, vsub
from .simdlanes import float_from_bits, vexp2, vsel_gt


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
_LIM32, _HALF32, _ONE32, _ZERO32 = _F(-18.0), _F(0.5), _F(1.0), _F(0.0)
_C64_BACKWARDS = tuple(1.0 / math.factorial(i) for i in range(13, 0, -1))   # the float64 Taylor terms, last first
_C32_BACKWARDS = _C32[::-1]


def _expm1_neg(v):
    """expm1(v) for v <= 0; under numba, the float32/float64 versions below (a select, no call)."""
    return math.expm1(v)


@njit(inline="always")
def _expm1_neg64(v):
    # v = k ln2 + r, |r| <= ln2/2 (Cody-Waite); expm1(r) by Taylor to r^13 (error < 1e-17);
    # expm1(v) = (2^k - 1) + 2^k expm1(r), 2^k built from its exponent bits (simdlanes.float_from_bits).
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
def elu(v):
    # ELU of one value. exp is computed for every value and the sign picks (a select, not a
    # branch), so loops over it vectorize, which a call inside the `else` would prevent.
    e = _expm1_neg(v)
    return v if v >= 0 else e


# The same ELU on 16-lane vectors (simd.py): the scalar versions' operations lane by lane, in
# the same order, so a value gets the same bits either way; fused into the pooling kernels' stores.

def velu(v):
    """ELU of every lane of a simd vector (numba only: the float32/float64 versions below)."""
    raise NotImplementedError("velu runs inside numba kernels")


@njit
def _vpoly(r, backwards):
    # c1 + r * (c2 + r * (... + r * cK)) for the vector r, in the scalar Horner expression's order;
    # backwards = (cK, ..., c2, c1). A plain njit function (LLVM inlines it): numba's IR inliner
    # warns on loops
    acc = vsplat(backwards[0])
    for i in range(1, len(backwards)):
        acc = vadd(vsplat(backwards[i]), vmul(r, acc))
    return acc


@njit(inline="always")
def _vexpm1_neg64(v):
    # _expm1_neg64 lane by lane (max(v, -40) keeps a NaN, as np.maximum does)
    lim = vsplat(-40.0)
    t = vsel_gt(lim, v, lim, v)
    k = vfloor(vadd(vmul(t, vsplat(_INV_LN2)), vsplat(0.5)))
    r = vsub(vsub(t, vmul(k, vsplat(_LN2_HI))), vmul(k, vsplat(_LN2_LO)))
    q = vmul(r, _vpoly(r, _C64_BACKWARDS))
    s = vexp2(k)
    return vadd(vsub(s, vsplat(1.0)), vmul(s, q))


@njit(inline="always")
def _vexpm1_neg32(v):
    # _expm1_neg32 lane by lane
    lim = vsplat(_LIM32)
    t = vsel_gt(lim, v, lim, v)
    k = vfloor(vadd(vmul(t, vsplat(_INV_LN2_32)), vsplat(_HALF32)))
    r = vsub(vsub(t, vmul(k, vsplat(_LN2_HI32))), vmul(k, vsplat(_LN2_LO32)))
    q = vmul(r, _vpoly(r, _C32_BACKWARDS))
    s = vexp2(k)
    return vadd(vsub(s, vsplat(_ONE32)), vmul(s, q))


@overload(velu, inline="always")
def _velu_numba(v):
    # v if v >= 0 else expm1(v); a NaN lane stays NaN
    if v.dtype == types.float32:
        return lambda v: vsel_gt(vsplat(_ZERO32), v, _vexpm1_neg32(v), v)
    return lambda v: vsel_gt(vsplat(0.0), v, _vexpm1_neg64(v), v)


@njit(cache=True, nogil=True)
def elu_forward_into(z, a):
    # z (D,) flat   ->   a (D,)
    for i in range(z.shape[0]):
        a[i] = elu(z[i])


@njit(cache=True, nogil=True)
def elu_backward_into(da, a, dz):
    # da (D,), a (D,) forward output   ->   dz (D,)
    for i in range(da.shape[0]):
        v = a[i]
        dz[i] = da[i] if v > 0 else da[i] * (v + 1)


def elu_forward(z, out=None):
    """Elementwise ELU (alpha = 1) of a C-contiguous array of any shape; out may alias z."""
    check_array("z", z, (None,) * z.ndim if isinstance(z, np.ndarray) else (None,))
    out = check_out("out", out, z.shape, z.dtype)
    elu_forward_into(z.reshape(-1), out.reshape(-1))
    return out


def elu_backward(da, a, out=None):
    """Gradient of ELU from its output a: da (any shape), a (same) -> dz; out may alias da."""
    check_array("da", da, (None,) * da.ndim if isinstance(da, np.ndarray) else (None,))
    check_array("a", a, da.shape, da.dtype)
    out = check_out("out", out, da.shape, da.dtype)
    elu_backward_into(da.reshape(-1), a.reshape(-1), out.reshape(-1))
    return out


# --------------------------------------------------------------------------------------------
# logistic sigmoid: 1 / (1 + exp(-v)), without overflow for either sign of v
# --------------------------------------------------------------------------------------------

@njit(inline="always")
def logistic(v):
    # 1 / (1 + exp(-v)) without overflow for either sign of v
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)



@njit(cache=True)
def sigmoid_into(z, probs):
    # z (N,O)   ->   probs (N,O)
    N, O = z.shape
    for n in range(N):
        for c in range(O):
            probs[n, c] = logistic(z[n, c])


def sigmoid(z, out=None):
    """Stable elementwise logistic function of z (N,O)."""
    check_array("z", z, (None, None))
    out = check_out("out", out, z.shape, z.dtype)
    sigmoid_into(z, out)
    return out
