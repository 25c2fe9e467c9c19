"""One micro-shard's training-mode passes on its preallocated workspace, in segments that end where
batch normalization needs the whole batch's statistics (shards.py runs the segments of every
shard and the BN sums between them); each reads like the network diagram, one layer call per line.
Not the API (model.py), not the cross-shard sums (shards.py), not the inference path.

Shapes: n images in the shard, C classes; every workspace array's shape is commented in Workspace.
"""

from __future__ import annotations

import numpy as np

from .arch import FC1_UNITS
from .kernels import activation, conv, conv16, conv32, fc, pool
from .kernels.loss import sigmoid_bce_into


class Workspace:
    """Every intermediate array of one shard's pass (allocated once, reused every step)."""

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
        self.z2 = e(n, 16, 16, 16)
        self.y2 = e(n, 16, 16, 16) if bn else None
        self.p2 = e(n, 16, 8, 8)                     # ELU(pool2)
        self.flat = self.p2.reshape(n, 1024)         # view
        self.arg2 = np.empty((n, 16, 8, 8), np.int8)
        self.z3 = e(n, FC1_UNITS)
        self.y3 = e(n, FC1_UNITS) if bn else None
        self.a3 = e(n, FC1_UNITS)
        self.z4 = e(n, num_classes)
        self.probs = e(n, num_classes)               # shards.py makes it a view of the batch's probs
        self.zero6, self.zero16 = z(6), z(16)        # "no bias" for the fused pool+ELU after BN
        self.xhat = {k: e(*a.shape) for k, a in ((1, self.z1), (2, self.z2), (3, self.z3))} if bn else {}
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
        # conv2's backward scratch: dz padded by 2 (border stays 0), dz with the map index last,
        # and the weight gradient as the kernel writes it (C,K,K,F)
        self.dzp2 = z(n, 16, 20, 20)
        self.dzt2 = e(n, 256, 16)
        self.dwt2 = e(6, 5, 5, 16)
        self._bn_pairs = {1: (self.z1, self.y1, self.xhat.get(1), self.dy1, self.dz1),
                          2: (self.z2, self.y2, self.xhat.get(2), self.dy2, self.dz2),
                          3: (self.z3, self.y3, self.xhat.get(3), self.dy3, self.dz3)}

    def bn_pair(self, layer):
        """(z, y, xhat, dy, dz) of BN layer 1, 2 or 3."""
        return self._bn_pairs[layer]


# ---- forward, segment by segment: each ends at a pre-BN activation (or the loss) -------------

def forward_conv1(P, ws, x, bn):
    """x (n,1,32,32) -> z1 (+ bias under BN: BN's input)."""
    conv32.pad2_into(x, ws.xp1)
    conv32.conv32_forward_into(ws.xp1, P["conv1.w"], ws.z1)
    if bn:
        conv.add_bias_into(ws.z1.reshape(ws.n, 6, -1), P["conv1.b"])


def forward_conv2(P, ws, bn):
    """(pool1, ELU) of y1 (BN) or z1 + bias -> xp2 -> conv2 -> z2 (+ bias under BN).
    ELU after the max is the same as before it (ELU increases) and takes a quarter of the exps."""
    if bn:
        pool.pool_elu_forward_into(ws.y1, ws.zero6, ws.xp2, 2, ws.arg1)
    else:
        pool.pool_elu_forward_into(ws.z1, P["conv1.b"], ws.xp2, 2, ws.arg1)
    conv16.conv16_forward_into(ws.xp2, P["conv2.w"], ws.z2)
    if bn:
        conv.add_bias_into(ws.z2.reshape(ws.n, 16, -1), P["conv2.b"])


def forward_fc1(P, ws, bn):
    """(pool2, ELU) of y2 (BN) or z2 + bias -> flat (n,1024) -> fc1 -> z3."""
    if bn:
        pool.pool_elu_forward_into(ws.y2, ws.zero16, ws.p2, 0, ws.arg2)
    else:
        pool.pool_elu_forward_into(ws.z2, P["conv2.b"], ws.p2, 0, ws.arg2)
    fc.fc_forward_into(ws.flat, P["fc1.w"], P["fc1.b"], ws.z3)


def forward_head(P, ws, bn, labels, weights, scale):
    """ELU of y3 (BN) or z3 -> fc2 -> logits z4 -> sigmoid probs and the loss gradient dz4
    ((p - onehot) * weight * scale, scale = 1/B of the whole batch). Returns the shard's
    sum of weight * loss (float64)."""
    activation.elu_forward_into((ws.y3 if bn else ws.z3).reshape(-1), ws.a3.reshape(-1))
    fc.fc_forward_into(ws.a3, P["fc2.w"], P["fc2.b"], ws.z4)
    return sigmoid_bce_into(ws.z4, labels, weights, scale, ws.probs, ws.dz4)


# ---- backward: the forward reversed, segment by segment (each ends at a BN's dy) -------------

def backward_head(P, G, ws, bn):
    """dz4 -> fc2's gradients, da3 -> ELU -> dy3 (BN) or dz3."""
    fc.fc_backward_into(ws.dz4, ws.a3, P["fc2.w"], G["fc2.w"], G["fc2.b"], ws.da3)
    activation.elu_backward_into(ws.da3.reshape(-1), ws.a3.reshape(-1), (ws.dy3 if bn else ws.dz3).reshape(-1))


def backward_fc1(P, G, ws, bn):
    """dz3 -> fc1's gradients, dflat -> (pool2, ELU) -> dy2 (BN) or dz2."""
    fc.fc_backward_into(ws.dz3, ws.flat, P["fc1.w"], G["fc1.w"], G["fc1.b"], ws.dflat)
    pool.pool_elu_backward_into(ws.dp2, ws.p2, 0, ws.arg2, ws.dy2 if bn else ws.dz2)


def backward_conv2(P, G, ws, bn):
    """dz2 -> conv2's gradients, dp1 -> (pool1, ELU) -> dy1 (BN) or dz1."""
    conv16.conv16_backward_dw_into(ws.dz2, ws.xp2, ws.dzt2, ws.dwt2)
    conv16.conv16_grads_finish_into(ws.dwt2, ws.dzt2, G["conv2.w"], G["conv2.b"])
    conv16.conv16_backward_dx_into(ws.dz2, P["conv2.w"], ws.dzp2, ws.dp1)
    pool.pool_elu_backward_into(ws.dp1, ws.xp2, 2, ws.arg1, ws.dy1 if bn else ws.dz1)


def backward_conv1(G, ws):
    """dz1 -> conv1's gradients (the input layer: no dx)."""
    conv32.conv32_backward_dw_into(ws.dz1, ws.xp1, G["conv1.w"], G["conv1.b"])


def shard_forward_plain(P, ws, x, labels, weights, scale):
    """One shard's forward without BN, up to the loss; returns its sum of weight * loss."""
    forward_conv1(P, ws, x, False)
    forward_conv2(P, ws, False)
    forward_fc1(P, ws, False)
    return forward_head(P, ws, False, labels, weights, scale)


def shard_step_plain(P, G, ws, x, labels, weights, scale):
    """A whole training step of one shard without BN (nothing waits for other shards); returns
    its sum of weight * loss."""
    loss = shard_forward_plain(P, ws, x, labels, weights, scale)
    backward_head(P, G, ws, False)
    backward_fc1(P, G, ws, False)
    backward_conv2(P, G, ws, False)
    backward_conv1(G, ws)
    return loss
