"""The output layer and loss: sigmoid of each logit and binary cross-entropy against the one-hot
target, forward and backward in one pass, from the logits (stable). Not the sigmoid alone
(activation.py) nor the metrics (evaluate.py).
"""

# Shape legend: N images, O outputs (classes); w (N,) per-image weights (1 when not given), B the
# batch the loss is averaged over (a micro-shard's N images are part of a batch of B).
#     loss = (1/B) sum_n w_n sum_c [ max(z,0) - z*y + log1p(exp(-|z|)) ];  dz = (sigmoid(z) - y) * w_n / B

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .activation import logistic
from .checks import check_array, check_labels, check_out


@njit(cache=True, nogil=True)
def sigmoid_bce_into(z, labels, weights, scale, probs, dz):
    # z (N,O) logits, labels (N,) int, weights (N,) float64, scale = 1/B   ->   probs (N,O),
    # dz (N,O) = (p - t) * weights[n] * scale; returns sum_n weights[n] * loss_n (float64, in order)
    N, O = z.shape
    total = 0.0
    for n in range(N):
        lab = labels[n]
        ws = weights[n] * scale
        row = 0.0
        for c in range(O):
            v = z[n, c]
            t = 1.0 if lab == c else 0.0
            row += max(v, 0.0) - v * t + math.log1p(math.exp(-abs(v)))
            p = logistic(v)
            probs[n, c] = p
            dz[n, c] = (p - t) * ws
        total += weights[n] * row
    return total


def sigmoid_bce_forward_backward(z, labels, weights=None, probs=None, dz=None):
    """z (N,O) logits, labels (N,) in [0,O), weights (N,) or None -> (weighted mean loss over the
    N images, probs (N,O), dz (N,O))."""
    N, O = check_array("z", z, (None, None)).shape
    check_labels(labels, N, O)
    w = np.ones(N) if weights is None else check_array("weights", np.asarray(weights, np.float64), (N,))
    probs = check_out("probs", probs, (N, O), z.dtype)
    dz = check_out("dz", dz, (N, O), z.dtype)
    total = sigmoid_bce_into(z, labels.astype(np.int64, copy=False), w, 1.0 / N, probs, dz)
    return float(total / N), probs, dz
