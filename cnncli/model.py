"""The network: forward/backward of the whole net (training) and inference, on flat parameter
buffers whose layout and initialisation live in arch.py (re-exported here).

    x (N,1,32,32) -> conv1 5x5, 6 maps, pad 2 [-> bn1] -> ELU -> maxpool 2x2   -> (N,6,16,16)
                  -> conv2 5x5x6, 16 maps, pad 2 [-> bn2] -> ELU -> maxpool 2x2 -> (N,16,8,8)
                  -> flatten (C-order, NCHW) (N,1024) -> fc1 65 [-> bn3] -> ELU -> fc2 C -> sigmoid

Loss: binary cross-entropy of the C sigmoid outputs against the one-hot target, summed over the
C outputs and AVERAGED over the batch, computed from the logits (log-sigmoid, stable).

Batch normalization (`batchnorm`), between the linear step and the ELU of conv1, conv2 and fc1:
  "none"    no BN.
  "unit"    the seed's Part IV: statistics per unit (every map position) over the batch; gamma and
            beta have the layer's own shape (6,32,32), (16,16,16), (65,).
  "channel" the usual per-map BN (PyTorch BatchNorm2d/1d): statistics over (N,H,W) per map;
            gamma/beta (6,), (16,), (65,).
  Training uses the batch's biased variance and sqrt(V + eps); running statistics are updated as
  PyTorch does (running = (1-momentum)*running + momentum*stat, running_var from the UNBIASED
  batch variance) and are used in inference mode. Conv/fc biases stay even under BN (as in the
  seed); their gradient is then zero up to rounding.

All parameters live in one flat contiguous buffer (`Params.flat`) with named views; the same for
gradients and for the BN running statistics. The functional API (`loss_and_grads`,
`predict_proba`) runs the same code as `Network`, which keeps preallocated workspaces. Training
runs layer by layer over the batch (passes.py); inference runs image by image in fused kernels
(kernels/inference.py). It is not a trainer (train.py) and has no NumPy-only path (infer.py).
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import passes
from .arch import (BATCHNORM, FC1_UNITS, IMAGE_SHAPE, Params, check_batchnorm,  # noqa: F401
                   check_dtype, check_num_classes, allocate, buffer_specs, infer_architecture,
                   init_buffers, init_params, param_specs)
from .kernels import batchnorm as norm
from .kernels import inference
from .kernels.checks import check_array, check_labels
from .kernels.loss import sigmoid_bce_into
from .kernels.threads import blas_single_thread, workers

PREDICT_CHUNK = 256          # predict_proba works through big inputs in chunks of this many images


def _check_input(x, dtype, name="x"):
    check_array(name, x, (None,) + IMAGE_SHAPE, dtype, contiguous=False)
    if x.shape[0] < 1:
        raise ValueError(f"{name} has shape {x.shape}: the batch is empty")
    return x


def _check_params(params, buffers, batchnorm, eps=1e-5, momentum=0.1):
    num_classes, found = infer_architecture(params)
    check_batchnorm(batchnorm)
    if found != batchnorm:
        raise ValueError(f"params are for batchnorm={found!r}, not {batchnorm!r}")
    dtype = np.asarray(params["fc2.b"]).dtype
    check_dtype(dtype)
    for name, shape in param_specs(num_classes, batchnorm):
        check_array(f"params[{name!r}]", params[name], shape, dtype, contiguous=False)
    if batchnorm != "none" and buffers is not None:
        for name, shape in buffer_specs(num_classes, batchnorm):
            if name not in buffers:
                raise ValueError(f"buffers is missing {name!r}")
            check_array(f"buffers[{name!r}]", buffers[name], shape, dtype, contiguous=False)
    if not (isinstance(eps, (float, int)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if not (isinstance(momentum, (float, int)) and 0 <= momentum <= 1):
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    return num_classes, np.dtype(dtype)


SMALL_BATCH = 8   # up to this many images one thread is faster than waking the others
SPLIT_MIN = 16    # training batches (no BN) of at least this many images run as two halves


@contextlib.contextmanager
def _numba_threads_for(n):
    """One numba thread for tiny batches (parallel-loop start-up would dominate), else unchanged."""
    if n > SMALL_BATCH:
        yield
        return
    import numba

    old = numba.get_num_threads()
    if old != 1:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        if old != 1:
            numba.set_num_threads(old)


class Network:
    """The fast path the trainer uses: parameters, gradients and BN buffers as flat buffers,
    and preallocated workspaces per batch size (a step allocates nothing after the first)."""

    MAX_WORKSPACES = 6

    def __init__(self, num_classes=12, batchnorm="none", eps=1e-5, momentum=0.1,
                 dtype=np.float32, seed=0):
        check_num_classes(num_classes)
        check_batchnorm(batchnorm)
        self.dtype = check_dtype(dtype)
        if not (isinstance(eps, (float, int)) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if not (isinstance(momentum, (float, int)) and 0 <= momentum <= 1):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.num_classes = int(num_classes)
        self.batchnorm = batchnorm
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.params = init_params(num_classes, batchnorm, seed, self.dtype)
        self.grads = allocate(param_specs(num_classes, batchnorm), self.dtype)
        self.buffers = init_buffers(num_classes, batchnorm, self.dtype)
        self._ws = {}
        self._affine = None        # predict_proba's BN-folding arrays (see _inference_affine)
        self._half_grads = None    # the two halves' gradients (see _train_step_halves)

    def load_arrays(self, params, buffers=None):
        """Copy parameter (and BN buffer) arrays into this network's flat buffers, checking shapes."""
        for name, shape in param_specs(self.num_classes, self.batchnorm):
            if name not in params:
                raise ValueError(f"params is missing {name!r}")
            if tuple(np.shape(params[name])) != shape:
                raise ValueError(f"params[{name!r}] has shape {np.shape(params[name])}, expected {shape}")
            self.params[name][...] = params[name]
        if buffers is not None:
            for name, shape in buffer_specs(self.num_classes, self.batchnorm):
                if name not in buffers:
                    raise ValueError(f"buffers is missing {name!r}")
                if tuple(np.shape(buffers[name])) != shape:
                    raise ValueError(f"buffers[{name!r}] has shape {np.shape(buffers[name])}, expected {shape}")
                self.buffers[name][...] = buffers[name]

    def _workspace(self, n, slot=0):
        ws = self._ws.get((n, slot))
        if ws is None:
            if len(self._ws) >= self.MAX_WORKSPACES:
                self._ws.pop(next(iter(self._ws)))
            ws = self._ws[(n, slot)] = passes.Workspace(n, self.num_classes, self.batchnorm, self.dtype)
        return ws

    def train_step(self, x, labels):
        """Forward + backward in training mode on x (N,1,32,32), labels (N,).

        Overwrites self.grads, updates the BN running statistics; returns (mean loss, probs (N,C)).
        """
        _check_input(x, self.dtype)
        n = x.shape[0]
        check_labels(labels, n, self.num_classes)
        if self.batchnorm != "none" and n < 2:
            raise ValueError(f"x has shape {x.shape}: training with batchnorm={self.batchnorm!r} "
                             "needs at least 2 images in a batch")
        labels = labels.astype(np.int64, copy=False)
        if self.batchnorm == "none" and n >= SPLIT_MIN:
            return self._train_step_halves(x, labels)
        ws = self._workspace(n)
        with blas_single_thread(), _numba_threads_for(n):
            passes.forward(self.params, self.buffers, x, ws, self.batchnorm, self.eps, self.momentum)
            loss = sigmoid_bce_into(ws.z4, labels, ws.probs, ws.dz4)
            passes.backward(self.params, self.grads, ws, self.batchnorm)
        return float(loss), ws.probs.copy()

    def forward_loss(self, x, labels):
        """Training-mode forward only (batch statistics, running statistics updated when kept):
        the mean loss as a float64. Unchecked, for gradcheck's thousands of passes on its own
        arrays: x (N,1,32,32) of the network's dtype, labels (N,) int64."""
        ws = self._workspace(x.shape[0])
        passes.forward(self.params, self.buffers, x, ws, self.batchnorm, self.eps, self.momentum)
        return sigmoid_bce_into(ws.z4, labels, ws.probs, ws.dz4)

    def _train_step_halves(self, x, labels):
        """train_step without BN as two independent halves of the batch, one per worker thread when
        there are two (else one after the other: the same arithmetic, so the same bits for any
        thread count). Each half's output gradient is scaled by its share of the batch, so the two
        gradient buffers add up to the batch mean."""
        n = x.shape[0]
        h = n // 2
        spans = ((0, h), (h, n))
        if self._half_grads is None:
            self._half_grads = [allocate(param_specs(self.num_classes, "none"), self.dtype) for _ in spans]
        losses = [0.0, 0.0]
        wss = [self._workspace(e - s, slot=1 + i) for i, (s, e) in enumerate(spans)]

        def half(i):
            s, e = spans[i]
            ws = wss[i]
            passes.forward(self.params, None, x[s:e], ws, "none", self.eps, self.momentum)
            losses[i] = sigmoid_bce_into(ws.z4, labels[s:e], ws.probs, ws.dz4)
            ws.dz4 *= (e - s) / n                       # the half's mean -> its share of the batch mean
            passes.backward(self.params, self._half_grads[i], ws, "none")

        pool, t = workers()
        with blas_single_thread():
            if t >= 2:
                for f in [pool.submit(half, i) for i in range(2)]:
                    f.result()
            else:
                half(0)
                half(1)
        np.add(self._half_grads[0].flat, self._half_grads[1].flat, out=self.grads.flat)
        loss = (losses[0] * h + losses[1] * (n - h)) / n
        return float(loss), np.concatenate([wss[0].probs, wss[1].probs])

    def predict_proba(self, x):
        """Inference mode (running statistics): x (N,1,32,32) -> probabilities (N,C).

        Up to SMALL_BATCH images: one serial kernel does everything (inference.infer_serial_into).
        More: the conv part runs image by image in one parallel kernel (infer_features_into), fc1 is
        one BLAS GEMM per chunk, the head one small kernel. Results do not depend on the thread
        count; the two routes differ in fc1's summation order (float rounding only).
        """
        _check_input(x, self.dtype)
        n = x.shape[0]
        P = self.params
        (sc1, sh1), (sc2, sh2), (sc3, sh3) = self._inference_affine()
        out = np.empty((n, self.num_classes), dtype=self.dtype)             # (N,C)
        if n <= SMALL_BATCH:
            inference.infer_serial_into(x, P["conv1.w"], P["conv1.b"], sc1, sh1, P["conv2.w"], P["conv2.b"], sc2, sh2,
                              np.ascontiguousarray(P["fc1.w"]), P["fc1.b"], sc3, sh3, P["fc2.w"], P["fc2.b"], out)
            return out
        with blas_single_thread():        # a 2-thread OpenBLAS made this GEMM of 256 images 6x slower
            for s in range(0, n, PREDICT_CHUNK):
                xs = x[s:s + PREDICT_CHUNK]
                flat = np.empty((xs.shape[0], 1024), self.dtype)            # (n,1024)
                inference.infer_features_into(xs, P["conv1.w"], P["conv1.b"], sc1, sh1, P["conv2.w"], P["conv2.b"],
                                    sc2, sh2, flat)
                z3 = np.matmul(flat, P["fc1.w"].T)                           # (n,65), no bias yet
                inference.infer_head_into(z3, P["fc1.b"], sc3, sh3, P["fc2.w"], P["fc2.b"], out[s:s + xs.shape[0]])
        return out

    def _inference_affine(self):
        """[(scale, shift)] for conv1, conv2, fc1: BN folded with the running statistics, recomputed
        every call (the optimizer changes the parameters in place); 1 and 0 without BN.
        Conv layers get (F, U) arrays, U = H*W for per-unit BN, else 1; fc1 gets (65,).
        The flat views and output arrays are made once per (params, buffers) pair and reused."""
        if self._affine is None or self._affine[0] is not self.params or self._affine[1] is not self.buffers:
            if self.batchnorm == "none":
                folds = []
                out = [(np.ones(shape, self.dtype), np.zeros(shape, self.dtype))
                       for shape in ((6, 1), (16, 1), (FC1_UNITS,))]
            else:
                folds, out = [], []
                for layer, rows in ((1, 6), (2, 16), (3, None)):
                    g = self.params[f"bn{layer}.gamma"].reshape(-1)
                    scale, shift = np.empty_like(g), np.empty_like(g)
                    folds.append((g, self.params[f"bn{layer}.beta"].reshape(-1),
                                  self.buffers[f"bn{layer}.running_mean"].reshape(-1),
                                  self.buffers[f"bn{layer}.running_var"].reshape(-1), scale, shift))
                    out.append((scale, shift) if rows is None else (scale.reshape(rows, -1), shift.reshape(rows, -1)))
            self._affine = (self.params, self.buffers, folds, out)
        _, _, folds, out = self._affine
        eps = self.dtype.type(self.eps)      # the fold in the network's dtype (vectorizes in float32)
        for g, beta, mean, var, scale, shift in folds:
            norm.bn_fold_into(g, beta, mean, var, eps, scale, shift)
        return out


def _network_for(params, buffers, batchnorm, eps, momentum):
    """A Network whose params/buffers ARE the given arrays (no copy when they are Params)."""
    num_classes, dtype = _check_params(params, buffers, batchnorm, eps, momentum)
    net = Network.__new__(Network)
    net.num_classes, net.batchnorm, net.dtype = num_classes, batchnorm, dtype
    net.eps, net.momentum, net._ws, net._affine = float(eps), float(momentum), {}, None
    net._half_grads = None
    net.params = params
    net.grads = allocate(param_specs(num_classes, batchnorm), dtype)
    net.buffers = buffers          # None: training mode keeps no running statistics
    return net


def loss_and_grads(params, x, labels, batchnorm="none", eps=1e-5, buffers=None, momentum=0.1):
    """Training-mode loss (mean over the batch of the summed BCE) and gradients (a new Params).

    When `buffers` is given (batchnorm != "none") the running statistics are updated in place;
    without it they are not kept.
    """
    net = _network_for(params, buffers, batchnorm, eps, momentum)
    loss, _ = net.train_step(x, labels)
    return loss, net.grads


def predict_proba(params, x, batchnorm="none", eps=1e-5, buffers=None):
    """Inference-mode probabilities (N,C); buffers (running statistics) required when batchnorm != "none"."""
    if batchnorm != "none" and buffers is None:
        raise ValueError(f"predict_proba with batchnorm={batchnorm!r} needs buffers (running statistics)")
    net = _network_for(params, buffers, batchnorm, eps, 0.1)
    return net.predict_proba(x)
