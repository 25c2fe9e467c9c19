"""The whole network's training-mode passes on a preallocated workspace: `forward` and `backward`
read like the network diagram (backward as forward reversed), one public layer call per line.
Not the API (model.py: Network, loss_and_grads, predict_proba) nor the inference path.

Shapes: N images in the batch, C classes; every workspace array's shape is commented in Workspace.
"""

from __future__ import annotations

import numpy as np

from .arch import FC1_UNITS
from .kernels import activation, conv, conv16, conv32, fc, pool
from .kernels import batchnorm as norm


class Workspace:
    """Every intermediate array of one pass for a batch of n images (allocated once, reused)."""

    def __init__(self, n, num_classes, batchnorm, dtype):
        e = lambda *s: np.empty(s, dtype=dtype)      # noqa: E731
        z = lambda *s: np.zeros(s, dtype=dtype)      # noqa: E731
        bn = batchnorm != "none"
        self.n = n
        self.xp1 = z(n, 1, 36, 36)                   # padded input (border stays 0)
        self.z1 = e(n, 6, 32, 32)                    # conv1 output (bias added later, see forward)
        self.y1 = e(n, 6, 32, 32) if bn else None    # bn1 output
        self.xp2 = z(n, 6, 20, 20)                   # ELU(pool1), written into a padded buffer
        self.arg1 = np.empty((n, 6, 16, 16), np.int8)
        self.conv2 = conv16.Conv16Scratch(n, 16, 6, dtype)
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


def bn_forward(P, B, layer, z, y, cache, batchnorm, eps, momentum):
    """Batch norm of layer 1, 2 or 3 in training mode: y from z with the batch statistics (kept in
    `cache`); B's running statistics updated as PyTorch does when B is given."""
    xhat, mean, var, invstd = cache
    g, b = P[f"bn{layer}.gamma"], P[f"bn{layer}.beta"]
    zv, yv, xv = (_bn_view(t, batchnorm, layer) for t in (z, y, xhat))
    if zv.ndim == 2:
        norm.bn_unit_forward_into(zv, g.reshape(-1), b.reshape(-1), eps, yv, xv,
                                  mean.reshape(-1), var.reshape(-1), invstd.reshape(-1))
        count = zv.shape[0]
    else:
        norm.bn_channel_forward_into(zv, g, b, eps, yv, xv, mean, var, invstd)
        count = zv.shape[0] * zv.shape[2]
    if B is not None:
        rm, rv = B[f"bn{layer}.running_mean"], B[f"bn{layer}.running_var"]
        rm *= 1 - momentum
        rm += momentum * mean
        rv *= 1 - momentum
        rv += (momentum * count / (count - 1)) * var


def bn_backward(P, G, layer, dy, dz, cache, batchnorm):
    """Gradients of bn_forward: dz from dy, and G's bn{layer}.gamma/beta (overwritten)."""
    xhat, mean, var, invstd = cache
    g = P[f"bn{layer}.gamma"]
    dyv, dzv, xv = (_bn_view(t, batchnorm, layer) for t in (dy, dz, xhat))
    dg, dbeta = G[f"bn{layer}.gamma"], G[f"bn{layer}.beta"]
    if dyv.ndim == 2:
        norm.bn_unit_backward_into(dyv, xv, g.reshape(-1), invstd.reshape(-1), dzv,
                                   dg.reshape(-1), dbeta.reshape(-1))
    else:
        norm.bn_channel_backward_into(dyv, xv, g, invstd, dzv, dg, dbeta)


def forward(P, B, x, ws, batchnorm, eps, momentum):
    """Training-mode forward pass of x (N,1,32,32) into the workspace, up to the logits ws.z4
    (N,C): batch statistics (B's running statistics updated if given).

    conv -> [+bias, BN] -> fused (pool, ELU, + bias when no BN); ELU after the max is the same as
    before it (ELU increases), and computes a quarter of the exponentials.
    """
    bn = batchnorm != "none"
    n = x.shape[0]
    ws.xp1[:, :, 2:34, 2:34] = x
    conv32.conv32_forward_into(ws.xp1, P["conv1.w"], ws.z1)
    if bn:
        conv.add_bias_into(ws.z1.reshape(n, 6, -1), P["conv1.b"])
        bn_forward(P, B, 1, ws.z1, ws.y1, ws.bn[1], batchnorm, eps, momentum)
        pool.pool_elu_forward_into(ws.y1, ws.zero6, ws.xp2, 2, ws.arg1)
    else:
        pool.pool_elu_forward_into(ws.z1, P["conv1.b"], ws.xp2, 2, ws.arg1)

    conv16.conv16_forward_chunks(ws.xp2, P["conv2.w"], ws.z2, ws.conv2)
    if bn:
        conv.add_bias_into(ws.z2.reshape(n, 16, -1), P["conv2.b"])
        bn_forward(P, B, 2, ws.z2, ws.y2, ws.bn[2], batchnorm, eps, momentum)
        pool.pool_elu_forward_into(ws.y2, ws.zero16, ws.p2, 0, ws.arg2)
    else:
        pool.pool_elu_forward_into(ws.z2, P["conv2.b"], ws.p2, 0, ws.arg2)

    fc.fc_forward_into(ws.flat, P["fc1.w"], P["fc1.b"], ws.z3)
    pre = ws.z3
    if bn:
        bn_forward(P, B, 3, ws.z3, ws.y3, ws.bn[3], batchnorm, eps, momentum)
        pre = ws.y3
    activation.elu_forward_into(pre.reshape(-1), ws.a3.reshape(-1))

    fc.fc_forward_into(ws.a3, P["fc2.w"], P["fc2.b"], ws.z4)


def backward(P, G, ws, batchnorm):
    """Backward pass from the logits' gradient ws.dz4 (N,C): forward reversed. Overwrites every
    gradient in G."""
    bn = batchnorm != "none"
    # fc2
    fc.fc_backward_into(ws.dz4, ws.a3, P["fc2.w"], G["fc2.w"], G["fc2.b"], ws.da3)
    # ELU, [bn3], fc1
    if bn:
        activation.elu_backward_into(ws.da3.reshape(-1), ws.a3.reshape(-1), ws.dy3.reshape(-1))
        bn_backward(P, G, 3, ws.dy3, ws.dz3, ws.bn[3], batchnorm)
    else:
        activation.elu_backward_into(ws.da3.reshape(-1), ws.a3.reshape(-1), ws.dz3.reshape(-1))
    fc.fc_backward_into(ws.dz3, ws.flat, P["fc1.w"], G["fc1.w"], G["fc1.b"], ws.dflat)
    # (pool2, ELU), [bn2], conv2
    if bn:
        pool.pool_elu_backward_into(ws.dp2, ws.p2, 0, ws.arg2, ws.dy2)
        bn_backward(P, G, 2, ws.dy2, ws.dz2, ws.bn[2], batchnorm)
    else:
        pool.pool_elu_backward_into(ws.dp2, ws.p2, 0, ws.arg2, ws.dz2)
    conv16.conv16_backward_chunks(ws.dz2, ws.xp2, P["conv2.w"], G["conv2.w"], G["conv2.b"], ws.conv2, ws.dp1)
    # (pool1, ELU), [bn1], conv1 (input layer: no dx)
    if bn:
        pool.pool_elu_backward_into(ws.dp1, ws.xp2, 2, ws.arg1, ws.dy1)
        bn_backward(P, G, 1, ws.dy1, ws.dz1, ws.bn[1], batchnorm)
    else:
        pool.pool_elu_backward_into(ws.dp1, ws.xp2, 2, ws.arg1, ws.dz1)
    conv32.conv32_backward_dw_into(ws.dz1, ws.xp1, G["conv1.w"], G["conv1.b"])
