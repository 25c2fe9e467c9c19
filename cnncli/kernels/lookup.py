"""The input lookup: uint8 images -> the network's float input through a (256,) lookup table
(the normalization), in one pass. Not image decoding or resizing (the cnncli.data package does those).

Shapes: M images stored, N in the batch, H, W their height and width.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .checks import check_array, check_out


@njit(cache=True, nogil=True)
def lookup_batch_into(images, idx, table, x):
    # images (M,H,W) uint8, idx (N,) int, table (256,)   ->   x (N,1,H,W) = table[images[idx]]
    # (one pass and no temporaries, where numpy's fancy indexing makes two)
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
    out = check_out("out", out, (idx.shape[0], 1, H, W), table.dtype)
    lookup_batch_into(images, idx, table, out)
    return out
