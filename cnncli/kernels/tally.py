"""A training step's tally for the trainer: whether every gradient is finite and how many images
the step got right, in one pass over the gradient buffer and the probabilities (one numba call
instead of a handful of small NumPy calls per step). Not a metric module (evaluate.py is).

Shapes: P parameters, N images, C classes.
"""

from __future__ import annotations

from numba import njit

from .checks import check_array, check_labels


@njit(cache=True, nogil=True)
def step_tally(grads, probs, labels):
    # grads (P,), probs (N,C), labels (N,) int   ->   -1 when a gradient is NaN or infinite, else
    # the images whose highest probability (the first, on ties, as np.argmax) is their label's
    bad = False
    for i in range(grads.shape[0]):
        v = grads[i]
        bad |= (v - v) != 0.0           # NaN exactly for NaN and +-inf: no branch, no overflow
    if bad:
        return -1
    right = 0
    for n in range(probs.shape[0]):
        best = 0
        for c in range(1, probs.shape[1]):
            if probs[n, c] > probs[n, best]:
                best = c
        right += best == labels[n]
    return right


def tally(grads, probs, labels) -> int:
    """-1 when any of grads (P,) is NaN or infinite, else how many rows of probs (N,C) have their
    first maximum at labels (N,) (integers in [0, C)): np.argmax(probs, 1) == labels counted."""
    check_array("grads", grads, (None,))
    n, c = check_array("probs", probs, (None, None), grads.dtype, contiguous=False).shape
    return int(step_tally(grads, probs, check_labels(labels, n, c)))
