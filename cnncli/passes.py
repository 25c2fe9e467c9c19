"""One micro-shard's training-mode passes on its preallocated workspace, in segments that end where
batch normalization needs the whole batch's statistics; each reads like the network diagram. Not
the API (model.py), not the cross-shard sums (shards.py), not the inference path.
"""

# One micro-shard's training-mode passes on its preallocated workspace, in segments that end where
# batch normalization needs the whole batch's statistics (shards.py runs the segments of every
# shard and the BN sums between them); each reads like the network diagram, one layer call per line.
# The conv layers' BN runs fused with their pool + ELU (kernels/bnpool.py): their BN output, xhat
# and dy are never stored; under BN their segments are one numba call each (kernels/segments.py
# runs the same layer kernels in the same order), and in one process kernels/bnstep.py runs the whole
# BN step in numba from the same kernels.
#
# Shapes: n images in the shard, C classes; every workspace array's shape is commented in Workspace.

from __future__ import annotations

import numpy as np

from .arch import FC1_UNITS
from .kernels import activation, bnpool, conv16, conv32, fc, fcgrad, pool, segments
from .kernels.loss import sigmoid_bce_into


class Workspace:
    """Every intermediate array of one shard's pass (allocated once, reused every step)."""

    def __init__(self, n, num_classes, batchnorm, dtype):
        e = lambda *s: np.empty(s, dtype=dtype)      # noqa: E731
        z = lambda *s: np.zeros(s, dtype=dtype)      # noqa: E731
        bn = batchnorm != "none"
        self.n = n
        self.xin = e(n, 1, 32, 32)                   # the input a step's transform makes (lookup, augmentation)
        self.xp1 = z(n, 1, 36, 36)                   # padded input (border stays 0)
        self.z1 = e(n, 6, 32, 32)                    # conv1 output (bias added later, see forward)
        self.xp2 = z(n, 6, 20, 20)                   # ELU(pool1), written into a padded buffer
        self.arg1 = np.empty((n, 6, 16, 16), np.int8)
        self.z2 = e(n, 16, 16, 16)
        self.p2 = e(n, 16, 8, 8)                     # ELU(pool2)
        self.flat = self.p2.reshape(n, 1024)         # view
        self.arg2 = np.empty((n, 16, 8, 8), np.int8)
        self.z3 = e(n, FC1_UNITS)
        self.y3 = e(n, FC1_UNITS) if bn else None    # bn3 output
        self.xhat3 = e(n, FC1_UNITS) if bn else None
        self.a3 = e(n, FC1_UNITS)
        self.z4 = e(n, num_classes)
        self.probs = e(n, num_classes)               # shards.py makes it a view of the batch's probs
        # gradients of the activations
        self.dz4 = e(n, num_classes)
        self.da3 = e(n, FC1_UNITS)
        self.dz3 = e(n, FC1_UNITS)
        self.dy3 = e(n, FC1_UNITS) if bn else None
        self.dflat = e(n, 1024)
        self.dp2 = self.dflat.reshape(n, 16, 8, 8)
        self.dz2 = e(n, 16, 16, 16)
        self.dp1 = e(n, 6, 16, 16)
        self.dz1 = e(n, 6, 32, 32)
        # conv2's backward scratch: dz padded by 2 (border stays 0), dz with the map index last,
        # and the weight gradient as the kernel writes it (C,K,K,F)
        self.dzp2 = z(n, 16, 20, 20)
        self.dzt2 = e(n, 256, 16)
        self.dwt2 = e(6, 5, 5, 16)

    def rows(self, a, b, dwt2):
        """A shard's workspace whose per-image arrays are rows a:b of this one's (a view, no copy),
        with its own conv2 weight scratch dwt2 (6,5,5,16)."""
        ws = object.__new__(Workspace)
        for name, arr in vars(self).items():
            setattr(ws, name, arr[a:b] if isinstance(arr, np.ndarray) else arr)
        ws.n, ws.dwt2 = b - a, dwt2
        return ws


# ---- forward, segment by segment: each ends at a pre-BN activation (or the loss) -------------

def forward_conv1(P, ws, x):
    """x (n,1,32,32) -> z1 without the bias (the pool adds it, or, under BN, shards.py with BN1's
    moments: bnstats.bn_bias_moments_into)."""
    conv32.pad2_into(x, ws.xp1)
    conv32.conv32_forward_into(ws.xp1, P["conv1.w"], ws.z1)


def forward_conv2(P, ws):
    """(pool1, ELU) of z1 + bias -> xp2 -> conv2 -> z2 without the bias (as forward_conv1). ELU
    after the max is the same as before it (ELU increases) and takes a quarter of the exps."""
    pool.pool_elu_forward_into(ws.z1, P["conv1.b"], ws.xp2, 2, ws.arg1)
    conv16.conv16_forward_into(ws.xp2, P["conv2.w"], ws.z2)


def per_unit(P):
    """True when the network's BN is per unit (BN1's gamma has a value per conv1 output, not per map)."""
    return P["bn1.gamma"].size != P["conv1.b"].size


def forward_bn1_input(P, ws, x, row):
    """Under BN: x -> conv1 -> z1 + bias, BN1's moments into row (one numba call, kernels/segments.py)."""
    segments.conv1_moments_into(x, ws.xp1, P["conv1.w"], ws.z1, P["conv1.b"], row)


def forward_bn2_input(P, ws, coef1, row):
    """Under BN: (BN1 given its coefficients, pool1, ELU) of z1 -> xp2 -> conv2 -> z2 + bias, BN2's
    moments into row (one numba call)."""
    segments.bn1_conv2_moments_into(ws.z1, coef1, ws.xp2, ws.arg1, P["conv2.w"], ws.z2, P["conv2.b"], row,
                                    per_unit(P))


def forward_fc1(P, ws, bn2=None):
    """(pool2, ELU) of z2 + bias, or of BN2(z2) given its coefficients bn2 -> flat (n,1024) -> fc1
    -> z3. fc1 is a numba loop product, not BLAS: kernels/plainstep.py and bnstep.py run these
    segments inside numba (the same bits on every path)."""
    if bn2 is None:
        pool.pool_elu_forward_into(ws.z2, P["conv2.b"], ws.p2, 0, ws.arg2)
    else:
        bnpool.bn_pool_elu_forward_into(ws.z2, bn2, ws.p2, 0, ws.arg2, per_unit(P))
    fc.fc_forward_loop_into(ws.flat, P["fc1.w"], P["fc1.b"], ws.z3)


def head(P, G, ws, labels, weights, scale, backward):
    """Without BN: ELU of z3 -> fc2 -> logits z4 -> sigmoid probs and the loss gradient dz4 ((p -
    onehot) * weight * scale, scale = 1/B of the whole batch), and with backward fc2's gradients
    and back to dz3 (fc2's products numba loops, no BLAS). Returns the shard's sum of weight * loss
    (float64)."""
    activation.elu_forward_into(ws.z3.reshape(-1), ws.a3.reshape(-1))
    fc.fc_narrow_forward_into(ws.a3, P["fc2.w"], P["fc2.b"], ws.z4)
    loss = sigmoid_bce_into(ws.z4, labels, weights, scale, ws.probs, ws.dz4)
    if backward:
        fcgrad.fc_grads_into(ws.dz4, ws.a3, G["fc2.w"], G["fc2.b"])
        fc.fc_narrow_dx_into(ws.dz4, P["fc2.w"], ws.da3)
        activation.elu_backward_into(ws.da3.reshape(-1), ws.a3.reshape(-1), ws.dz3.reshape(-1))
    return loss


# ---- backward: the forward reversed, segment by segment (each ends at a BN's dy) -------------

def backward_fc1(P, G, ws, bn2=None):
    """dz3 -> fc1's gradients, dflat -> (pool2, ELU) -> dz2; under BN, bn2 = (coef, row): only
    the shard's sums of BN2's dy and dy*xhat into row (backward_bn2_to_bn1_sums gives dz2 later)."""
    fcgrad.fc_grads_into(ws.dz3, ws.flat, G["fc1.w"], G["fc1.b"])
    fc.fc_dx_loop_into(ws.dz3, P["fc1.w"], ws.dflat)
    if bn2 is None:
        pool.pool_elu_backward_into(ws.dp2, ws.p2, 0, ws.arg2, ws.dz2)
    else:
        bnpool.bn_unpool_sums_into(ws.dp2, ws.p2, 0, ws.arg2, ws.z2, bn2[0], bn2[1])


def backward_conv2(P, G, ws):
    """dz2 -> conv2's gradients, dp1 -> (pool1, ELU) -> dz1."""
    conv16.conv16_backward_dw_into(ws.dz2, ws.xp2, ws.dzt2, ws.dwt2)
    conv16.conv16_grads_finish_into(ws.dwt2, ws.dzt2, G["conv2.w"], G["conv2.b"])
    conv16.conv16_backward_dx_into(ws.dz2, P["conv2.w"], ws.dzp2, ws.dp1)
    pool.pool_elu_backward_into(ws.dp1, ws.xp2, 2, ws.arg1, ws.dz1)


def backward_conv1(G, ws):
    """dz1 -> conv1's gradients (the input layer: no dx)."""
    conv32.conv32_backward_dw_into(ws.dz1, ws.xp1, G["conv1.w"], G["conv1.b"])


def backward_bn2_to_bn1_sums(P, G, ws, coef2, coef1, row1):
    """Under BN, given BN2's coefficients with the batch's sums: dp2 -> (pool2, ELU, BN2) -> dz2 ->
    conv2's gradients, dp1 -> the shard's sums of BN1's dy and dy*xhat into row1 (one numba call)."""
    segments.bn2_conv2_back_into(ws.dp2, ws.p2, ws.arg2, ws.z2, coef2, ws.dz2, ws.xp2, ws.dzt2, ws.dwt2,
                                 G["conv2.w"], G["conv2.b"], P["conv2.w"], ws.dzp2, ws.dp1, ws.arg1, ws.z1,
                                 coef1, row1, per_unit(P))


def backward_bn1(P, G, ws, coef1):
    """Under BN, given BN1's coefficients with the batch's sums: dp1 -> (pool1, ELU, BN1) -> dz1 ->
    conv1's gradients (one numba call)."""
    segments.bn1_conv1_back_into(ws.dp1, ws.xp2, ws.arg1, ws.z1, coef1, ws.dz1, ws.xp1, G["conv1.w"],
                                 G["conv1.b"], per_unit(P))


def shard_step_plain(P, G, ws, x, labels, weights, scale, backward=True):
    """One shard's training step without BN (nothing waits for other shards), forward only when
    backward=False: the layer kernels kernels/plainstep.py runs, in its order. Returns the shard's
    sum of weight * loss."""
    forward_conv1(P, ws, x)
    forward_conv2(P, ws)
    forward_fc1(P, ws)
    loss = head(P, G, ws, labels, weights, scale, backward)
    if backward:
        backward_fc1(P, G, ws)
        backward_conv2(P, G, ws)
        backward_conv1(G, ws)
    return loss
