"""Argument checks for the kernels' wrappers and for model.py: array shape/dtype/layout, output
arrays given or allocated, class labels. ValueError naming the argument; no numba here.
"""

from __future__ import annotations

import numpy as np

from ..arch import FLOAT_DTYPES


def check_array(name, arr, shape, dtype=None, contiguous=True):
    """Raise ValueError unless `arr` is an ndarray of `shape` (None = any size) and `dtype`."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name} has shape {arr.shape}, expected {want}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        cast = f" ({name}.astype(np.{np.dtype(dtype)}))" if np.dtype(dtype).kind == "f" else ""
        raise ValueError(f"{name} has dtype {arr.dtype} (shape {arr.shape}), expected {np.dtype(dtype)}{cast}")
    if dtype is None and arr.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {arr.dtype} (shape {arr.shape}), expected float32 or float64")
    if contiguous and not arr.flags.c_contiguous:
        raise ValueError(f"{name} (shape {arr.shape}) must be C-contiguous")
    return arr


def check_out(name, out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    return check_array(name, out, shape, dtype, contiguous=False)


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


def check_bn_z(name, z, dtype=None):
    """z (N,D) for per-unit BN or (N,C,S) for per-channel BN."""
    if getattr(z, "ndim", None) not in (2, 3):
        raise ValueError(f"{name} must have shape (N, D) or (N, C, S), got {np.shape(z)}")
    return check_array(name, z, (None,) * z.ndim, dtype)
