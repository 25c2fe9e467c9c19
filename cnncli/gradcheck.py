"""Finite-difference check of the hand-derived gradients, for every parameter tensor, in float64 on
random inputs (`cnn gradcheck`). It checks Network.train_step's gradients; it is not the test
suite's reference comparisons (tests/reference.py, tests/test_reference_grads.py).
"""

# Everything runs in float64 on random inputs (standard normal images, random labels) and the
# Glorot-initialised network of `seed`, with random gamma/beta (so BN is not at its trivial point).
# For each tensor the analytic gradient g (Network.train_step) is compared with a central finite
# difference g_fd of the training-mode loss on the checked elements: all of a tensor with at most
# FULL_CHECK elements, a random SUBSET of the others (every tensor is covered).
#
#     error = max |g - g_fd| / max |g|      over the checked elements of the tensor
#
# The finite difference is the 4th-order central stencil
#     g_fd(h) = [8 (L(p+h) - L(p-h)) - (L(p+2h) - L(p-2h))] / (12 h)
# evaluated for each tensor at the steps h in STEPS = (1e-6, 1e-5, 1e-7), in that order, stopping
# at the first step whose error is below GOOD = 1e-8; the reported error is the smallest one found
# (the printout names its step). Why several steps: FD error is truncation (~h^4 L^(5))
# plus rounding (~1e-16 |L| / h), and the two regimes meet in this net. BN over a batch of 2
# (per-unit BN; BatchNorm1d of fc1) has units whose two samples almost coincide, where invstd is
# ~1/sqrt(eps) and the loss curves on a scale of ~1e-3 in z: those tensors need h <= 1e-6. Tensors
# whose gradient is tiny next to |L| (e.g. fc1.w behind a 2-sample BN) need h >= 1e-6 to keep rounding
# noise below 1e-6 of max|g|. With one fixed step some seed always failed one of the two.
# A bug would have to be hidden at all three steps at once on every checked element, which does not
# happen: a wrong gradient shows errors ~1e-2..1 at every step.
#
# Exception, not hidden: with batch normalization the bias of the layer before each BN (conv1.b,
# conv2.b, fc1.b) cannot change the loss - BN subtracts the batch mean - so its analytic gradient is
# zero up to rounding and a relative error means nothing. For those tensors the reported number is
# the ABSOLUTE max |g_fd| (which must be ~0), marked "abs" in the printout.

from __future__ import annotations

import numpy as np

from . import model as M

FULL_CHECK = 32       # tensors up to this many elements are checked whole
SUBSET = 30           # elements checked in bigger tensors
STEPS = (1e-6, 1e-5, 1e-7)   # tried in this order; stop once the error is below GOOD
GOOD = 1e-8
TOLERANCE = 1e-6


def _zero_by_construction(name, batchnorm):
    return batchnorm != "none" and name in ("conv1.b", "conv2.b", "fc1.b")


def _setup(batchnorm, batch_size, seed, num_classes):
    rng = np.random.default_rng(seed)
    net = M.Network(num_classes, batchnorm, dtype=np.float64, seed=seed)
    net.buffers = None     # training-mode passes here must not touch running statistics
    for name, arr in net.params.items():
        if name.endswith(".gamma"):
            arr[...] = rng.uniform(0.5, 1.5, size=arr.shape)
        elif name.endswith(".beta") or name.endswith(".b"):
            arr[...] = rng.uniform(-0.2, 0.2, size=arr.shape)
    x = rng.standard_normal((batch_size, 1, 32, 32))
    labels = rng.integers(0, num_classes, size=batch_size)
    return net, x, labels, rng


def _loss(net, x, labels):
    """Training-mode forward only: the loss at the current parameters."""
    return net.forward_loss(x, labels)


def gradcheck(batchnorm, batch_size=2, seed=0, num_classes=12, steps=STEPS, only=None, detail=False):
    """[(name, error)] for every parameter tensor (see the module docstring for `error`).

    With detail=True the tuples are (name, error, step that gave it, max |g|).
    """
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)      # thousands of tiny passes: thread wake-ups would dominate
    try:
        return _gradcheck(batchnorm, batch_size, seed, num_classes, steps, only, detail)
    finally:
        numba.set_num_threads(threads)


def _gradcheck(batchnorm, batch_size, seed, num_classes, steps, only, detail):
    net, x, labels, rng = _setup(batchnorm, batch_size, seed, num_classes)
    labels = labels.astype(np.int64)
    net.train_step(x, labels)
    grads = {k: v.copy() for k, v in net.grads.items()}
    results = []
    for name, p in net.params.items():
        flat = p.reshape(-1)
        if flat.size <= FULL_CHECK:
            idx = np.arange(flat.size)
        else:
            idx = np.sort(rng.choice(flat.size, size=SUBSET, replace=False))
        if only is not None and name not in only:
            continue
        g = grads[name].reshape(-1)[idx]
        scale = float(np.max(np.abs(g)))
        best = None
        for h in steps:
            g_fd = np.empty(len(idx))
            for j, i in enumerate(idx):
                orig = flat[i]
                vals = []
                for d in (h, -h, 2 * h, -2 * h):
                    flat[i] = orig + d
                    vals.append(_loss(net, x, labels))
                flat[i] = orig
                g_fd[j] = (8 * (vals[0] - vals[1]) - (vals[2] - vals[3])) / (12 * h)
            if _zero_by_construction(name, batchnorm) or scale == 0:
                err = float(np.max(np.abs(g_fd)))
            else:
                err = float(np.max(np.abs(g - g_fd))) / scale
            if best is None or err < best[0]:
                best = (err, h)
            if best[0] < GOOD:
                break
        results.append((name, best[0], best[1], scale) if detail else (name, best[0]))
    return results


def cold_cache(variants) -> bool:
    """True when numba's cache lacks float64 training kernels these variants' checks call (they then
    compile first, for minutes on a small machine)."""
    from . import kernelplan

    for bn in variants:
        first, later = kernelplan.plan(bn, dtype=np.float64, augment=False)
        if first:
            return True
    return False


def run_gradcheck(variants=("none", "unit", "channel"), batch_size=2, seed=0, echo=print,
                  tolerance=TOLERANCE, say=None) -> int:
    """Print one line per tensor and variant; return 0 if every error is below tolerance, else 1.
    say (a line -> None): told once when the kernels compile first."""
    if say is not None and cold_cache(variants):
        say("Compiling the float64 numba kernels of the check for this CPU (first run only; later runs load "
            "them from numba's cache) ...")
    checked, failed = 0, 0
    for bn in variants:
        for name, err, h, scale in gradcheck(bn, batch_size=batch_size, seed=seed, detail=True):
            absolute = _zero_by_construction(name, bn)
            ok = err < tolerance
            checked, failed = checked + 1, failed + (not ok)
            kind = "abs max|g_fd| (zero by construction)" if absolute else "rel max|g-g_fd|/max|g|"
            echo(f"{bn:8s} {name:10s} {err:10.3e}  {kind:38s} step {h:.0e}  max|g| {scale:9.3e}  "
                 f"{'ok' if ok else 'FAIL'}")
    echo(f"{checked - failed} of {checked} parameter tensors within {tolerance:g} of float64 finite differences"
         + (f"; {failed} FAIL" if failed else ""))
    return int(failed > 0)
