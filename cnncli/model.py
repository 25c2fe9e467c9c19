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
runs layer by layer over the batch; inference runs image by image in fused kernels (kernels.py,
"inference path"). It is not a trainer (train.py) and has no NumPy-only path (infer.py).
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import kernels as K
from .arch import (BATCHNORM, FC1_UNITS, IMAGE_SHAPE, Params, _check_batchnorm,  # noqa: F401
                   _check_dtype, _check_num_classes, allocate, buffer_specs, infer_architecture,
                   init_buffers, init_params, param_specs)

PREDICT_CHUNK = 256          # predict_proba works through big inputs in chunks of this many images


# ------------------------------------------------------------------------------------------------
# workspaces: every intermediate array of one forward/backward pass for a given batch size
# ------------------------------------------------------------------------------------------------

CHUNK = 8      # images per conv2 chunk (the unit of work of a worker thread; see _conv_backward)


class _Workspace:
    """Every intermediate array of one pass for a batch of n images (allocated once, reused)."""

    def __init__(self, n, num_classes, batchnorm, dtype):
        e = lambda *s: np.empty(s, dtype=dtype)      # noqa: E731
        z = lambda *s: np.zeros(s, dtype=dtype)      # noqa: E731
        bn = batchnorm != "none"
        self.n = n
        self.xp1 = z(n, 1, 36, 36)                   # padded input (border stays 0)
        self.z1 = e(n, 6, 32, 32)                    # conv1 output (bias added later, see _forward)
        self.y1 = e(n, 6, 32, 32) if bn else None    # bn1 output
        self.xp2 = z(n, 6, 20, 20)                   # ELU(pool1), written into a padded buffer
        self.arg1 = np.empty((n, 6, 16, 16), np.int8)
        self.conv2 = _ConvBuffers(n, 16, 6, dtype)
        self.z2 = e(n, 16, 16, 16)
        self.y2 = e(n, 16, 16, 16) if bn else None
        self.p2 = e(n, 16, 8, 8)                     # ELU(pool2)
        self.flat = self.p2.reshape(n, 1024)         # view
        self.arg2 = np.empty((n, 16, 8, 8), np.int8)
        self.z3 = e(n, FC1_UNITS)
        self.y3 = e(n, FC1_UNITS) if bn else None
        self.a3 = e(n, FC1_UNITS)
        self.z4 = e(n, num_classes)
        self.probs = e(n, num_classes)
        self.zero6, self.zero16 = z(6), z(16)        # "no bias" for the fused pool+ELU after BN
        # BN caches (xhat, mean, var, invstd) per layer
        self.bn = {}
        if bn:
            for k, z_ in ((1, self.z1), (2, self.z2), (3, self.z3)):
                stat = z_.shape[1:] if (batchnorm == "unit" or k == 3) else (z_.shape[1],)
                self.bn[k] = (e(*z_.shape), e(*stat), e(*stat), e(*stat))
        # gradients of the activations
        self.dz4 = e(n, num_classes)
        self.da3 = e(n, FC1_UNITS)
        self.dz3 = e(n, FC1_UNITS)
        self.dy3 = e(n, FC1_UNITS) if bn else None
        self.dflat = e(n, 1024)
        self.dp2 = self.dflat.reshape(n, 16, 8, 8)
        self.dy2 = e(n, 16, 16, 16) if bn else None
        self.dz2 = e(n, 16, 16, 16)
        self.dp1 = e(n, 6, 16, 16)
        self.dy1 = e(n, 6, 32, 32) if bn else None
        self.dz1 = e(n, 6, 32, 32)


def _bn_view(a, batchnorm, layer):
    """The (N,D) view for per-unit BN or the (N,C,S) view for per-channel BN of an activation."""
    n = a.shape[0]
    if batchnorm == "unit" or layer == 3:
        return a.reshape(n, -1)
    return a.reshape(n, a.shape[1], -1)


def _bn_train(P, B, layer, z, y, cache, batchnorm, eps, momentum):
    xhat, mean, var, invstd = cache
    g, b = P[f"bn{layer}.gamma"], P[f"bn{layer}.beta"]
    zv, yv, xv = (_bn_view(t, batchnorm, layer) for t in (z, y, xhat))
    if zv.ndim == 2:
        K._k_bn_unit_forward(zv, g.reshape(-1), b.reshape(-1), eps, yv, xv,
                             mean.reshape(-1), var.reshape(-1), invstd.reshape(-1))
        count = zv.shape[0]
    else:
        K._k_bn_channel_forward(zv, g, b, eps, yv, xv, mean, var, invstd)
        count = zv.shape[0] * zv.shape[2]
    if B is not None:
        rm, rv = B[f"bn{layer}.running_mean"], B[f"bn{layer}.running_var"]
        rm *= 1 - momentum
        rm += momentum * mean
        rv *= 1 - momentum
        rv += (momentum * count / (count - 1)) * var


def _bn_backward(P, G, layer, dy, dz, cache, batchnorm):
    xhat, mean, var, invstd = cache
    g = P[f"bn{layer}.gamma"]
    dyv, dzv, xv = (_bn_view(t, batchnorm, layer) for t in (dy, dz, xhat))
    dg, dbeta = G[f"bn{layer}.gamma"], G[f"bn{layer}.beta"]
    if dyv.ndim == 2:
        K._k_bn_unit_backward(dyv, xv, g.reshape(-1), invstd.reshape(-1), dzv,
                              dg.reshape(-1), dbeta.reshape(-1))
    else:
        K._k_bn_channel_backward(dyv, xv, g, invstd, dzv, dg, dbeta)


_POOL = [None, 0]      # [ThreadPoolExecutor, its size]


def _workers():
    """Worker threads for the conv2 chunks: as many as numba threads (numba.set_num_threads)."""
    import numba

    t = numba.get_num_threads()
    if t <= 1:
        return None, 1
    if _POOL[1] != t:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL[0] is not None:
            _POOL[0].shutdown(wait=True)
        # each worker runs numba kernels on one thread of its own (numba's thread count is per thread)
        _POOL[0] = ThreadPoolExecutor(max_workers=t, thread_name_prefix="cnncli-conv",
                                      initializer=numba.set_num_threads, initargs=(1,))
        _POOL[1] = t
    return _POOL[0], t


def _run(job, nchunks):
    """job(worker, stride) for each worker: worker w takes chunks w, w+T, ... (fixed assignment).
    OpenBLAS stays on one thread meanwhile (several threads calling a multi-threaded OpenBLAS
    at once was measured 100x slower)."""
    pool, t = _workers()
    t = min(t, nchunks)
    with K.blas_single_thread():
        if t <= 1:
            job(0, 1)
            return
        futures = [pool.submit(job, w, t) for w in range(t)]
        for f in futures:
            f.result()


def _chunk(n):
    """Images per chunk: at most CHUNK, and at least two chunks when n > 1 (both cores get work).
    It depends on n only, so results do not depend on the thread count."""
    return max(1, min(CHUNK, -(-n // 2)))


class _ConvBuffers:
    """conv2's scratch for one batch size: each chunk's weight gradient (summed in chunk order
    afterwards) and, per worker, a zero-bordered copy of a chunk's dz (the input gradient's input)."""

    def __init__(self, n, f, c, dtype):
        self.ch = _chunk(n)
        self.nchunks = -(-n // self.ch)
        self.f, self.dtype = f, dtype
        self.parts = np.empty((self.nchunks, c, 5, 5, f), dtype)     # (chunks, C,K,K,F) dw per chunk
        self.dwt = np.empty((c, 5, 5, f), dtype)                     # (C,K,K,F) their sum
        self.per_worker = []

    def get(self, w):
        """Worker w's scratch: dzp (ch, F, 20, 20), dz of a chunk padded by 2 (its border stays
        0), and dzt (ch, 256, F), dz of a chunk with the map index last."""
        while len(self.per_worker) <= w:
            self.per_worker.append((np.zeros((self.ch, self.f, 20, 20), self.dtype),
                                    np.empty((self.ch, 256, self.f), self.dtype)))
        return self.per_worker[w]


def _conv_forward(xp, w, z, bufs):
    """z (N,F,16,16) = conv(xp, w) WITHOUT bias (xp (N,C,20,20) zero-padded), per chunk of images."""
    ch = bufs.ch

    def job(worker, stride):
        for c in range(worker, bufs.nchunks, stride):
            s = c * ch
            K._k_conv16_forward(xp[s:s + ch], w, z[s:s + ch])     # the last chunk may be shorter
    _run(job, bufs.nchunks)


def _conv_backward(dz, xp, w, dw, db, bufs, dx):
    """dw, db (overwritten) and, when dx (N,C,16,16) is given, the input gradient. Each chunk's
    weight gradient goes to its own slot; the slots are summed in chunk order (bitwise reproducible)."""
    n, ch = dz.shape[0], bufs.ch

    def job(worker, stride):
        dzp, dzt = bufs.get(worker)
        for c in range(worker, bufs.nchunks, stride):
            s = c * ch
            m = min(ch, n - s)
            K._k_conv16_backward_dw(dz[s:s + m], xp[s:s + m], dzt[:m], bufs.parts[c])
            if dx is not None:
                K._k_conv16_backward_dx(dz[s:s + m], w, dzp[:m], dx[s:s + m])
    _run(job, bufs.nchunks)
    np.sum(bufs.parts, axis=0, out=bufs.dwt)
    dw[...] = bufs.dwt.transpose(3, 0, 1, 2)
    np.sum(dz.reshape(n, dz.shape[1], -1), axis=(0, 2), out=db)


def _forward(P, B, x, ws, batchnorm, eps, momentum):
    """Training-mode forward pass into the workspace: batch statistics (B updated if given).

    conv -> [+bias, BN] -> fused (pool, ELU, + bias when no BN); ELU after the max is the same as
    before it (ELU increases), and computes a quarter of the exponentials.
    """
    bn = batchnorm != "none"
    n = x.shape[0]
    ws.xp1[:, :, 2:34, 2:34] = x
    K._k_conv32_forward(ws.xp1, P["conv1.w"], ws.z1)
    if bn:
        K._k_add_bias(ws.z1.reshape(n, 6, -1), P["conv1.b"])
        _bn_train(P, B, 1, ws.z1, ws.y1, ws.bn[1], batchnorm, eps, momentum)
        K._k_pool_elu_forward(ws.y1, ws.zero6, ws.xp2, 2, ws.arg1)
    else:
        K._k_pool_elu_forward(ws.z1, P["conv1.b"], ws.xp2, 2, ws.arg1)

    _conv_forward(ws.xp2, P["conv2.w"], ws.z2, ws.conv2)
    if bn:
        K._k_add_bias(ws.z2.reshape(n, 16, -1), P["conv2.b"])
        _bn_train(P, B, 2, ws.z2, ws.y2, ws.bn[2], batchnorm, eps, momentum)
        K._k_pool_elu_forward(ws.y2, ws.zero16, ws.p2, 0, ws.arg2)
    else:
        K._k_pool_elu_forward(ws.z2, P["conv2.b"], ws.p2, 0, ws.arg2)

    np.matmul(ws.flat, P["fc1.w"].T, out=ws.z3)
    ws.z3 += P["fc1.b"]
    pre = ws.z3
    if bn:
        _bn_train(P, B, 3, ws.z3, ws.y3, ws.bn[3], batchnorm, eps, momentum)
        pre = ws.y3
    K._k_elu_forward(pre.reshape(-1), ws.a3.reshape(-1))

    np.matmul(ws.a3, P["fc2.w"].T, out=ws.z4)
    ws.z4 += P["fc2.b"]


def _backward(P, G, ws, batchnorm):
    """Backward pass: forward reversed. Overwrites every gradient in G."""
    bn = batchnorm != "none"
    # fc2
    np.matmul(ws.dz4.T, ws.a3, out=G["fc2.w"])
    np.sum(ws.dz4, axis=0, out=G["fc2.b"])
    np.matmul(ws.dz4, P["fc2.w"], out=ws.da3)
    # ELU, [bn3], fc1
    if bn:
        K._k_elu_backward(ws.da3.reshape(-1), ws.a3.reshape(-1), ws.dy3.reshape(-1))
        _bn_backward(P, G, 3, ws.dy3, ws.dz3, ws.bn[3], batchnorm)
    else:
        K._k_elu_backward(ws.da3.reshape(-1), ws.a3.reshape(-1), ws.dz3.reshape(-1))
    np.matmul(ws.dz3.T, ws.flat, out=G["fc1.w"])
    np.sum(ws.dz3, axis=0, out=G["fc1.b"])
    np.matmul(ws.dz3, P["fc1.w"], out=ws.dflat)
    # (pool2, ELU), [bn2], conv2
    if bn:
        K._k_pool_elu_backward(ws.dp2, ws.p2, 0, ws.arg2, ws.dy2)
        _bn_backward(P, G, 2, ws.dy2, ws.dz2, ws.bn[2], batchnorm)
    else:
        K._k_pool_elu_backward(ws.dp2, ws.p2, 0, ws.arg2, ws.dz2)
    _conv_backward(ws.dz2, ws.xp2, P["conv2.w"], G["conv2.w"], G["conv2.b"], ws.conv2, ws.dp1)
    # (pool1, ELU), [bn1], conv1 (input layer: no dx)
    if bn:
        K._k_pool_elu_backward(ws.dp1, ws.xp2, 2, ws.arg1, ws.dy1)
        _bn_backward(P, G, 1, ws.dy1, ws.dz1, ws.bn[1], batchnorm)
    else:
        K._k_pool_elu_backward(ws.dp1, ws.xp2, 2, ws.arg1, ws.dz1)
    K._k_conv32_backward_dw(ws.dz1, ws.xp1, G["conv1.w"], G["conv1.b"])


def _check_input(x, dtype, name="x"):
    K.check_array(name, x, (None,) + IMAGE_SHAPE, dtype, contiguous=False)
    if x.shape[0] < 1:
        raise ValueError(f"{name} has shape {x.shape}: the batch is empty")
    return x


def _check_params(params, buffers, batchnorm, eps=1e-5, momentum=0.1):
    num_classes, found = infer_architecture(params)
    _check_batchnorm(batchnorm)
    if found != batchnorm:
        raise ValueError(f"params are for batchnorm={found!r}, not {batchnorm!r}")
    dtype = np.asarray(params["fc2.b"]).dtype
    _check_dtype(dtype)
    for name, shape in param_specs(num_classes, batchnorm):
        K.check_array(f"params[{name!r}]", params[name], shape, dtype, contiguous=False)
    if batchnorm != "none" and buffers is not None:
        for name, shape in buffer_specs(num_classes, batchnorm):
            if name not in buffers:
                raise ValueError(f"buffers is missing {name!r}")
            K.check_array(f"buffers[{name!r}]", buffers[name], shape, dtype, contiguous=False)
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
        _check_num_classes(num_classes)
        _check_batchnorm(batchnorm)
        self.dtype = _check_dtype(dtype)
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
            ws = self._ws[(n, slot)] = _Workspace(n, self.num_classes, self.batchnorm, self.dtype)
        return ws

    def train_step(self, x, labels):
        """Forward + backward in training mode on x (N,1,32,32), labels (N,).

        Overwrites self.grads, updates the BN running statistics; returns (mean loss, probs (N,C)).
        """
        _check_input(x, self.dtype)
        n = x.shape[0]
        K.check_labels(labels, n, self.num_classes)
        if self.batchnorm != "none" and n < 2:
            raise ValueError(f"x has shape {x.shape}: training with batchnorm={self.batchnorm!r} "
                             "needs at least 2 images in a batch")
        labels = labels.astype(np.int64, copy=False)
        if self.batchnorm == "none" and n >= SPLIT_MIN:
            return self._train_step_halves(x, labels)
        ws = self._workspace(n)
        with K.blas_single_thread(), _numba_threads_for(n):
            _forward(self.params, self.buffers, x, ws, self.batchnorm, self.eps, self.momentum)
            loss = K._k_sigmoid_bce(ws.z4, labels, ws.probs, ws.dz4)
            _backward(self.params, self.grads, ws, self.batchnorm)
        return float(loss), ws.probs.copy()

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
            _forward(self.params, None, x[s:e], ws, "none", self.eps, self.momentum)
            losses[i] = K._k_sigmoid_bce(ws.z4, labels[s:e], ws.probs, ws.dz4)
            ws.dz4 *= (e - s) / n                       # the half's mean -> its share of the batch mean
            _backward(self.params, self._half_grads[i], ws, "none")

        pool, t = _workers()
        with K.blas_single_thread():
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

        Up to SMALL_BATCH images: one serial kernel does everything (kernels._k_infer_serial). More:
        the conv part runs image by image in one parallel kernel (kernels._k_infer_features), fc1 is
        one BLAS GEMM per chunk, the head one small kernel. Results do not depend on the thread
        count; the two routes differ in fc1's summation order (float rounding only).
        """
        _check_input(x, self.dtype)
        n = x.shape[0]
        P = self.params
        (sc1, sh1), (sc2, sh2), (sc3, sh3) = self._inference_affine()
        out = np.empty((n, self.num_classes), dtype=self.dtype)             # (N,C)
        if n <= SMALL_BATCH:
            K._k_infer_serial(x, P["conv1.w"], P["conv1.b"], sc1, sh1, P["conv2.w"], P["conv2.b"], sc2, sh2,
                              np.ascontiguousarray(P["fc1.w"]), P["fc1.b"], sc3, sh3, P["fc2.w"], P["fc2.b"], out)
            return out
        with K.blas_single_thread():        # a 2-thread OpenBLAS made this GEMM of 256 images 6x slower
            for s in range(0, n, PREDICT_CHUNK):
                xs = x[s:s + PREDICT_CHUNK]
                flat = np.empty((xs.shape[0], 1024), self.dtype)            # (n,1024)
                K._k_infer_features(xs, P["conv1.w"], P["conv1.b"], sc1, sh1, P["conv2.w"], P["conv2.b"],
                                    sc2, sh2, flat)
                z3 = np.matmul(flat, P["fc1.w"].T)                           # (n,65), no bias yet
                K._k_infer_head(z3, P["fc1.b"], sc3, sh3, P["fc2.w"], P["fc2.b"], out[s:s + xs.shape[0]])
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
            K._k_bn_fold(g, beta, mean, var, eps, scale, shift)
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
