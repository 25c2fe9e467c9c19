"""Inference forward pass of the network in plain NumPy (im2col views + matmul), no numba.

Same results as `model.predict_proba` (running BN statistics) up to float rounding. It exists so a
short `cnn predict` need not import numba and load its kernel cache (~0.8 s); it is not the fast
path for many images (model.Network is) and it has no training mode and no gradients.
"""

from __future__ import annotations

import numpy as np

from .arch import BATCHNORM, FLOAT_DTYPES, IMAGE_SHAPE, buffer_specs, param_specs
from .blas import single_thread

CHUNK = 16   # images per pass: the im2col copies stay in cache (8-32 measured best of 4..256: 145-170
             # vs 194 us/img at 256, float32, one thread)


def _conv(x, w):
    """'Same' 5x5 cross-correlation without bias: x (N,C,H,W), w (F,C,5,5) -> (N,F,H,W)."""
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    p = k // 2
    xp = np.zeros((n, c, h + 2 * p, wd + 2 * p), dtype=x.dtype)      # (N,C,Hp,Wp)
    xp[:, :, p:p + h, p:p + wd] = x
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # (N,C,H,W,K,K) view
    cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * k * k, h * wd)  # (N,C*K*K,H*W) copy
    return np.matmul(w.reshape(f, c * k * k), cols).reshape(n, f, h, wd)


def bn_folds(params, buffers, batchnorm, eps, dtype):
    """{layer: (scale, shift)}: inference batch norm with the running statistics folded into
    z*scale + shift (as the numba path does), once per predict_proba call; {} without BN."""
    folds = {}
    if batchnorm == "none":
        return folds
    for layer in (1, 2, 3):
        g, b = params[f"bn{layer}.gamma"], params[f"bn{layer}.beta"]
        rm, rv = buffers[f"bn{layer}.running_mean"], buffers[f"bn{layer}.running_var"]
        scale = (g / np.sqrt(rv + eps)).astype(dtype)
        shift = (b - rm * scale).astype(dtype)
        if batchnorm == "channel" and layer < 3:                       # (C,) -> (C,1,1)
            scale, shift = scale[:, None, None], shift[:, None, None]
        folds[layer] = (scale, shift)
    return folds


def _elu(z):
    """ELU (alpha 1): z where z >= 0, exp(z) - 1 elsewhere (no overflow on large z)."""
    return np.where(z >= 0, z, np.expm1(np.minimum(z, 0)))


def _pool(z):
    """2x2 max pool, stride 2: (N,C,H,W) -> (N,C,H/2,W/2). Rows, then columns: two elementwise
    maxima (far faster than a reshape + .max(axis=(3,5)))."""
    n, c, h, w = z.shape
    rows = z.reshape(n, c, h // 2, 2, w)
    m = np.maximum(rows[:, :, :, 0], rows[:, :, :, 1]).reshape(n, c, h // 2, w // 2, 2)  # (N,C,H/2,W)
    return np.maximum(m[..., 0], m[..., 1])


def _sigmoid(z):
    """Logistic function without overflow: 1/(1+e^-z) for z >= 0, e^z/(1+e^z) below."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _forward(params, folds, x):
    """x (N,1,32,32) -> probabilities (N,C); folds from bn_folds. Bias before BN; ELU after the
    max (ELU increases, so pool(ELU(v)) == ELU(pool(v)) and only a quarter of the exponentials are taken)."""
    a = x
    for layer, conv in ((1, "conv1"), (2, "conv2")):
        z = _conv(a, params[f"{conv}.w"]) + params[f"{conv}.b"][:, None, None]   # (N,F,H,W)
        if folds:
            scale, shift = folds[layer]
            z = z * scale + shift
        a = _elu(_pool(z))                                            # (N,F,H/2,W/2)
    flat = a.reshape(a.shape[0], -1)                                  # (N,1024) C-order
    z3 = flat @ params["fc1.w"].T + params["fc1.b"]                   # (N,65)
    if folds:
        scale, shift = folds[3]
        z3 = z3 * scale + shift
    z4 = _elu(z3) @ params["fc2.w"].T + params["fc2.b"]               # (N,C)
    return _sigmoid(z4)


def _check(params, buffers, x, batchnorm, eps):
    if batchnorm not in BATCHNORM:
        raise ValueError(f"batchnorm must be one of {BATCHNORM}, got {batchnorm!r}")
    if "fc2.b" not in params or np.ndim(params["fc2.b"]) != 1:
        raise ValueError("params has no (C,) 'fc2.b': cannot tell the number of classes")
    num_classes = int(np.shape(params["fc2.b"])[0])
    dtype = np.asarray(params["fc2.b"]).dtype
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"params must be float32 or float64, got {dtype}")
    if batchnorm != "none" and buffers is None:
        raise ValueError(f"predict_proba with batchnorm={batchnorm!r} needs buffers (running statistics)")
    groups = [("params", params, param_specs(num_classes, batchnorm))]
    if batchnorm != "none":
        groups.append(("buffers", buffers, buffer_specs(num_classes, batchnorm)))
    for label, arrays, specs in groups:
        for name, shape in specs:
            if name not in arrays:
                raise ValueError(f"{label} is missing {name!r} (batchnorm={batchnorm!r})")
            a = arrays[name]
            if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype:
                raise ValueError(f"{label}[{name!r}] must be {shape} {dtype}, got "
                                 f"{np.shape(a)} {getattr(a, 'dtype', type(a).__name__)}")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE or x.dtype != dtype:
        raise ValueError(f"x must be (N,{','.join(map(str, IMAGE_SHAPE))}) {dtype}, got "
                         f"{np.shape(x)} {getattr(x, 'dtype', type(x).__name__)}")
    if x.shape[0] < 1:
        raise ValueError(f"x has shape {x.shape}: the batch is empty")
    if not (isinstance(eps, (float, int)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    return num_classes, dtype


def predict_proba(params, x, batchnorm="none", eps=1e-5, buffers=None) -> np.ndarray:
    """Inference-mode probabilities (N,C) of x (N,1,32,32), in the params' dtype; the same
    arguments and checks as model.predict_proba (buffers required when batchnorm != "none")."""
    num_classes, dtype = _check(params, buffers, x, batchnorm, eps)
    n = x.shape[0]
    out = np.empty((n, num_classes), dtype=dtype)                     # (N,C)
    folds = bn_folds(params, buffers, batchnorm, eps, dtype)
    with single_thread(), np.errstate(over="ignore", invalid="ignore"):   # (overflowing weights: NaN
        for s in range(0, n, CHUNK):                                        # outputs, said by the caller)
            out[s:s + CHUNK] = _forward(params, folds, x[s:s + CHUNK])
    return out
