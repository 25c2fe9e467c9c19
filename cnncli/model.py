"""The network: forward/backward of the whole net (training) and inference, on flat parameter
buffers whose layout and initialisation live in arch.py (re-exported here). It is not a trainer
(trainer.py) and has no NumPy-only path (infer.py).
"""

#     x (N,1,32,32) -> conv1 5x5, 6 maps, pad 2 [-> bn1] -> ELU -> maxpool 2x2   -> (N,6,16,16)
#                   -> conv2 5x5x6, 16 maps, pad 2 [-> bn2] -> ELU -> maxpool 2x2 -> (N,16,8,8)
#                   -> flatten (C-order, NCHW) (N,1024) -> fc1 65 [-> bn3] -> ELU -> fc2 C -> sigmoid
#
# Loss: binary cross-entropy of the C sigmoid outputs against the one-hot target, summed over the
# C outputs and AVERAGED over the batch, computed from the logits (log-sigmoid, stable).
#
# Batch normalization (`batchnorm`), between the linear step and the ELU of conv1, conv2 and fc1:
#   "none"    no BN.
#   "unit"    the seed's Part IV: statistics per unit (every map position) over the batch; gamma and
#             beta have the layer's own shape (6,32,32), (16,16,16), (65,).
#   "channel" the usual per-map BN (PyTorch BatchNorm2d/1d): statistics over (N,H,W) per map;
#             gamma/beta (6,), (16,), (65,).
#   Training uses the batch's biased variance and sqrt(V + eps); running statistics are updated as
#   PyTorch does (running = (1-momentum)*running + momentum*stat, running_var from the UNBIASED
#   batch variance) and are used in inference mode. Conv/fc biases stay even under BN (as in the
#   seed); their gradient is then zero up to rounding.
#
# All parameters live in one flat contiguous buffer (`Params.flat`) with named views; the same for
# gradients and for the BN running statistics. The functional API (`loss_and_grads`,
# `predict_proba`) runs the same code as `Network`, which keeps preallocated workspaces. Training
# runs in micro-shards of 8 images on the worker threads, summed in one fixed tree, on one process
# or a block of shards per MPI rank (shards.py, distributed.py); inference runs image by image in
# fused kernels (kernels/inference.py).

from __future__ import annotations

import threading

import numpy as np

from . import shards
from .distributed import Comm
from .arch import (BATCHNORM, FC1_UNITS, IMAGE_SHAPE, Params, check_batchnorm,  # noqa: F401
                   check_bn_settings, check_dtype, check_num_classes, allocate, buffer_specs, infer_architecture,
                   init_buffers, init_params, param_specs)
from .kernels import batchnorm as norm
from .kernels import inference
from .kernels.checks import check_array, check_labels
from .kernels.threads import run_together, workers

PREDICT_BLOCK = 8           # predict_proba's largest chunk of images (one thread's, at a time)


def _copy_named(src, dst, specs, what):
    """src[name] into the flat buffer's view dst[name] for each (name, shape) of specs, or raise
    ValueError naming the missing array or the wrong shape (what: the argument's name)."""
    for name, shape in specs:
        if name not in src:
            raise ValueError(f"{what} is missing {name!r}")
        if tuple(np.shape(src[name])) != shape:
            raise ValueError(f"{what}[{name!r}] has shape {np.shape(src[name])}, expected {shape}")
        dst[name][...] = src[name]


def _check_input(x, dtype, name="x"):
    check_array(name, x, (None,) + IMAGE_SHAPE, dtype, contiguous=False)
    if x.shape[0] < 1:
        raise ValueError(f"{name} has shape {x.shape}: the batch is empty")
    return x


def _check_finite(x, name="x", chunk=1024):
    """ValueError naming the first image of x (N,1,32,32) that holds NaN or inf, in chunks of images
    (no temporary of x's size)."""
    for a in range(0, x.shape[0], chunk):
        part = x[a:a + chunk]
        if not np.isfinite(part).all():
            i = a + int(np.flatnonzero(~np.isfinite(part).reshape(part.shape[0], -1).all(axis=1))[0])
            raise ValueError(f"{name} holds NaN or inf (image {i} is the first such)")


def _check_params(params, buffers, batchnorm, eps=1e-5, momentum=0.1):
    num_classes, found = infer_architecture(params)
    check_batchnorm(batchnorm)
    if found != batchnorm:
        raise ValueError(f"params are for batchnorm={found!r}, not {batchnorm!r}")
    dtype = np.asarray(params["fc2.b"]).dtype
    check_dtype(dtype)
    # infer_architecture checked every name and shape: an ndarray of the dtype passes (the usual
    # case, ~20 arrays a call), anything else gets check_array's message
    for name, shape in param_specs(num_classes, batchnorm):
        a = params[name]
        if type(a) is not np.ndarray or a.dtype != dtype:
            check_array(f"params[{name!r}]", a, shape, dtype, contiguous=False)
    if batchnorm != "none" and buffers is not None:
        for name, shape in buffer_specs(num_classes, batchnorm):
            if name not in buffers:
                raise ValueError(f"buffers is missing {name!r}")
            a = buffers[name]
            if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
                check_array(f"buffers[{name!r}]", a, shape, dtype, contiguous=False)
    check_bn_settings(eps, momentum)
    return num_classes, np.dtype(dtype)


SMALL_BATCH = 8   # predict_proba: up to this many images run as one chunk on the calling thread


def _check_weights(weights, n):
    """None, or per-image loss weights (n,) as a float64 array: finite and >= 0."""
    if weights is None:
        return None
    try:
        w = np.ascontiguousarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be (n,) numbers, one per image, got {type(weights).__name__} "
                         f"{weights!r:.60}") from None
    if w.shape != (n,):
        raise ValueError(f"weights has shape {w.shape}, expected ({n},)")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights (shape {w.shape}) must be finite and >= 0, got min {w.min()}")
    return w


class Network:
    """The fast path the trainer uses: parameters, gradients and BN buffers as flat buffers,
    and preallocated per-shard workspaces per batch size (a step allocates nothing after the first
    but the comm's tree scratch). `comm` (distributed.Comm or MpiComm; None = one process) decides
    which shards of each batch this process computes and sums the shards' rows.

    Network(num_classes=12, batchnorm="none"|"unit"|"channel", eps=1e-5, momentum=0.1 (BN's running
    statistics), dtype=float32|float64, seed=0 (the weights' initialisation), comm=None).
    Attributes: params, grads (Params: .flat and named views, e.g. params["conv1.w"]), buffers (BN
    running statistics, Params), num_classes, batchnorm, eps, momentum, dtype. train_step(x, labels)
    fills grads; an Optimizer's step(params.flat, grads.flat) changes the weights."""

    MAX_PLANS = 6

    def __init__(self, num_classes=12, batchnorm="none", eps=1e-5, momentum=0.1,
                 dtype=np.float32, seed=0, comm=None):
        check_num_classes(num_classes)
        check_batchnorm(batchnorm)
        self.dtype = check_dtype(dtype)
        check_bn_settings(eps, momentum)
        self.num_classes = int(num_classes)
        self.batchnorm = batchnorm
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.params = init_params(num_classes, batchnorm, seed, self.dtype)
        self.grads = allocate(param_specs(num_classes, batchnorm), self.dtype)
        self.buffers = init_buffers(num_classes, batchnorm, self.dtype)
        self.comm = Comm() if comm is None else comm
        self._plans = {}
        self._affine = None        # predict_proba's BN-folding arrays (see _inference_affine)

    def __getstate__(self):
        # pickle / copy.deepcopy: the parameters, gradients and statistics (Params: their views rebuilt);
        # not the plans and BN folds, whose arrays would come back as copies no longer views of them, nor
        # an MPI communicator (the copy is one process's network)
        return {**vars(self), "_plans": {}, "_affine": None, "comm": None}

    def __setstate__(self, state):
        vars(self).update(state)
        self.comm = Comm()

    def load_arrays(self, params, buffers=None):
        """Copy parameter (and BN buffer) arrays into this network's flat buffers, checking shapes."""
        _copy_named(params, self.params, param_specs(self.num_classes, self.batchnorm), "params")
        if buffers is not None:
            _copy_named(buffers, self.buffers, buffer_specs(self.num_classes, self.batchnorm), "buffers")

    def _plan(self, n):
        """The shard plan (workspaces, gradient rows, BN sums) for a batch of n images on this rank."""
        lo, hi = self.comm.shard_block(shards.shard_count(n))
        plan = self._plans.get((n, lo, hi))
        if plan is None:
            if len(self._plans) >= self.MAX_PLANS:
                self._plans.pop(next(iter(self._plans)))
            plan = self._plans[(n, lo, hi)] = shards.Plan(n, lo, hi, self.num_classes, self.batchnorm, self.dtype)
        return plan

    def train_step(self, x, labels, weights=None, transform=None):
        """Forward + backward in training mode on the global batch x (B,1,32,32), labels (B,),
        optional per-image loss weights (B,) (the loss is mean_i w_i * loss_i, as Keras's
        class_weight). Every rank passes the same batch and computes its block of shards.
        transform(s, x[s], out), when given, writes the network's input for the images s (a slice
        of the batch) into out, a C-contiguous (len(s),1,32,32) array of the network's dtype; each
        shard runs it in its own task (augment.Augmenter.bind makes one). It must treat every image
        on its own, so that the step equals train_step(transformed x). x may be None when the
        transform makes the input alone (transform(s, None, out): the trainer's lookup of the
        images from the dataset, then their augmentation); the batch size is then len(labels). An
        augment.StepInput (the trainer's) is made inside the one-call step's kernel instead, shard
        by shard, with the same function: the same input.

        Overwrites self.grads, updates the BN running statistics; returns (loss, probs (B,C)),
        the same on every rank.
        """
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        if x is None:
            if transform is None:
                raise ValueError("x is None: only a transform that makes the input can stand in for it")
            if getattr(transform, "needs_x", False):
                raise ValueError("x is None, but this transform augments x: pass x, or make the input from stored "
                                 "images with Augmenter.bind(epoch, step, lookup=(images, idx, table, fills))")
            if not (isinstance(labels, np.ndarray) and labels.ndim == 1):
                raise ValueError("x is None: labels must be a 1-D numpy array (its length is the batch size), "
                                 f"got {getattr(labels, 'shape', type(labels).__name__)}")
            n = labels.shape[0]
            if n == 0:
                raise ValueError("labels is empty: the batch is empty")
            made = getattr(transform, "idx", None)          # (augment.StepInput: the images it looks up)
            if made is not None and len(made) != n:
                raise ValueError(f"the transform makes {len(made)} images' input, labels has {n}")
        else:
            n = _check_input(x, self.dtype).shape[0]
            _check_finite(x)              # (a NaN made the loss, the gradients and BN's running statistics NaN)
        check_labels(labels, n, self.num_classes)
        if self.batchnorm != "none" and n < 2:
            raise ValueError(f"the batch has {n} image(s): training with batchnorm={self.batchnorm!r} "
                             "needs at least 2 images in a batch")
        weights = _check_weights(weights, n)
        labels = labels.astype(np.int64, copy=False)
        plan = self._plan(n)
        loss = shards.run_step(self, plan, x, labels, weights, self.comm, transform=transform)
        return loss, np.array(self.comm.gather_rows(plan.probs))

    def forward_loss(self, x, labels):
        """Training-mode forward only (batch statistics, running statistics updated when kept):
        the mean loss as a float64. x (N,1,32,32) of the network's dtype, unchecked (gradcheck's
        thousands of passes on its own arrays); labels (N,) integers in [0, C), checked (an
        out-of-range label read another class's output)."""
        labels = check_labels(labels, x.shape[0], self.num_classes).astype(np.int64, copy=False)
        return shards.run_step(self, self._plan(x.shape[0]), x, labels, None, self.comm, backward=False)

    def predict_proba(self, x):
        """Inference mode (running statistics): x (N,1,32,32) -> probabilities (N,C).

        The whole network runs in chunks of up to PREDICT_BLOCK images (inference.infer_chunks_into,
        or infer_chunks_unit_into with per-unit BN: the conv part image by image, fc1 in the
        training path's 16-lane loop, the head), in one call per thread, each thread taking the next
        chunk from a shared counter (chunks shrink towards the end: inference.chunk_bounds); up to
        SMALL_BATCH images one chunk on the calling thread. No BLAS: an image's probabilities have
        the same bits in any batch, chunk or thread count.
        """
        _check_input(x, self.dtype)
        n = x.shape[0]
        P = self.params
        (sc1, sh1), (sc2, sh2), (sc3, sh3) = self._inference_affine()
        out = np.empty((n, self.num_classes), dtype=self.dtype)             # (N,C)
        args = (P["conv1.w"], P["conv1.b"], sc1, sh1, P["conv2.w"], P["conv2.b"], sc2, sh2,
                P["fc1.w"], np.zeros(FC1_UNITS, self.dtype), P["fc1.b"], sc3, sh3, P["fc2.w"], P["fc2.b"])
        kernel = inference.infer_chunks_unit_into if sc1.shape[1] > 1 else inference.infer_chunks_into
        sync = np.zeros(inference.SYNC_SIZE, np.int64)
        if n <= SMALL_BATCH:
            kernel(sync, np.array([0, n], np.int64), x, *args, out)
        else:
            bounds = inference.chunk_bounds(n, workers()[1], PREDICT_BLOCK)
            run_together(lambda t: kernel(sync, bounds, x, *args, out), lambda: None)   # (no waits to abort)
        if np.isnan(out).any():        # (a NaN in x: named, rather than NaN probabilities; x read only then)
            _check_finite(x)
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


_CACHE_LOCK = threading.Lock()
_NETWORKS = {}     # (num_classes, batchnorm, dtype, eps, momentum) -> Network reused by the functional API


def _network_for(params, buffers, batchnorm, eps, momentum):
    """A cached Network whose params/buffers ARE the given arrays (no copy when they are Params):
    its plans (workspaces) are reused from call to call. Call under _CACHE_LOCK."""
    num_classes, dtype = _check_params(params, buffers, batchnorm, eps, momentum)
    if not isinstance(params, Params) and not all(_plain(a) for a in params.values()):
        # (a transposed, strided or read-only tensor: the kernels take C-contiguous writable arrays, so a
        # copy; numba refused fc1.w.T with its own TypeError and compiled other layouts anew)
        params = {k: a if _plain(a) else np.array(a, order="C") for k, a in params.items()}
    key = (num_classes, batchnorm, dtype.str, float(eps), float(momentum))
    net = _NETWORKS.get(key)
    if net is None:
        if len(_NETWORKS) >= 4:
            _NETWORKS.pop(next(iter(_NETWORKS)))
        net = _NETWORKS[key] = Network(num_classes, batchnorm, eps, momentum, dtype)
    net.params = params
    net.buffers = buffers          # None: training mode keeps no running statistics
    return net


def _plain(a) -> bool:
    """Whether the array `a` is what the kernels take as it is: C-contiguous and writable."""
    return a.flags.c_contiguous and a.flags.writeable


def loss_and_grads(params, x, labels, batchnorm="none", eps=1e-5, buffers=None, momentum=0.1, weights=None):
    """Training-mode loss (weighted mean over the batch of the summed BCE; weights (N,) or None)
    and gradients (a new Params).

    When `buffers` is given (batchnorm != "none") the running statistics are updated in place;
    without it they are not kept.
    """
    with _CACHE_LOCK:
        net = _network_for(params, buffers, batchnorm, eps, momentum)
        loss, _ = net.train_step(x, labels, weights)
        return loss, net.grads.copy()


def predict_proba(params, x, batchnorm="none", eps=1e-5, buffers=None):
    """Inference-mode probabilities (N,C); buffers (running statistics) required when batchnorm != "none"."""
    if batchnorm != "none" and buffers is None:
        raise ValueError(f"predict_proba with batchnorm={batchnorm!r} needs buffers (running statistics)")
    with _CACHE_LOCK:
        net = _network_for(params, buffers, batchnorm, eps, 0.1)
        return net.predict_proba(x)
