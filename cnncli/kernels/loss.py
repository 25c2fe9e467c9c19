"""The output layer and loss: sigmoid of each logit and binary cross-entropy against the one-hot
target, forward and backward in one pass, from the logits (stable). Not the sigmoid alone
(activation.py) nor the metrics (evaluate.py).

Shape legend: N images, O outputs (classes).
    loss = (1/N) sum_n sum_c [ max(z,0) - z*y + log1p(exp(-|z|)) ];  dz = (sigmoid(z) - y) / N
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .activation import logistic
from .checks import check_array, check_labels, check_out


@njit(cache=True, nogil=True)
def sigmoid_bce_into(z, labels, probs, dz):
    # z (N,O) logits, labels (N,) int   ->   probs (N,O), dz (N,O); returns the mean loss (float64)
    N, O = z.shape
    total = 0.0
    for n in range(N):
        lab = labels[n]
        for c in range(O):
            v = z[n, c]
            t = 1.0 if lab == c else 0.0
            total += max(v, 0.0) - v * t + math.log1p(math.exp(-abs(v)))
            p = logistic(v)
            probs[n, c] = p
            dz[n, c] = (p - t) / N
    return total / N


def sigmoid_bce_forward_backward(z, labels, probs=None, dz=None):
    """z (N,O) logits, labels (N,) in [0,O) -> (mean loss, probs (N,O), dz (N,O))."""
    N, O = check_array("z", z, (None, None)).shape
    check_labels(labels, N, O)
    probs = check_out("probs", probs, (N, O), z.dtype)
    dz = check_out("dz", dz, (N, O), z.dtype)
    loss = sigmoid_bce_into(z, labels.astype(np.int64, copy=False), probs, dz)
    return float(loss), probs, dz
