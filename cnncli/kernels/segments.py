"""A BN training step's conv-layer tasks as single numba calls, each the layer kernels one shard's
phase calls, in order, on the same arrays (the same bits). No arithmetic of its own, no checks
(passes.py calls these on a shard's workspace).
"""

# A BN training step's conv-layer tasks as single numba calls: each function runs, in order, the
# layer kernels one shard's phase would call one by one from Python, on the same arrays (the same
# bits). With MPI ranks a task then releases and retakes the GIL once instead of once per kernel; in
# one process kernels/bnstep.py calls them inside its one-call step. No arithmetic of its own, no
# checks (passes.py calls these on a shard's workspace).
#
# Shapes: n images of the shard; the arrays are passes.Workspace's (their shapes are commented there).

from __future__ import annotations

import numpy as np
from numba import njit

from . import bnpool, bnstats, conv16, conv32


@njit(cache=True, nogil=True)
def conv1_moments_into(x, xp1, w1, z1, b1, row):
    # x (n,1,32,32) -> xp1 (padded) -> conv1 -> z1 (n,6,32,32) + b1, and BN1's moments of it into row
    conv32.pad2_into(x, xp1)
    conv32.conv32_forward_into(xp1, w1, z1)
    bnstats.bn_bias_moments_into(z1.reshape(z1.shape[0], 6, 1024), b1, row)


@njit(cache=True, nogil=True)
def bn1_conv2_moments_into(z1, coef1, xp2, arg1, w2, z2, b2, row, unit):
    # z1 -> (BN1, pool, ELU) -> xp2 (arg1 its argmax) -> conv2 -> z2 (n,16,16,16) + b2, BN2's
    # moments into row; unit: BN per unit (else per channel)
    # (offsets as np.int64: numba compiles an njit function once per value of a Python int constant passed
    # to it; as int64 every caller, passes.py's too, shares one compile per dtype)
    bnpool.bn_pool_elu_forward_into(z1, coef1, xp2, np.int64(2), arg1, unit)
    conv16.conv16_forward_into(xp2, w2, z2)
    bnstats.bn_bias_moments_into(z2.reshape(z2.shape[0], 16, 256), b2, row)


@njit(cache=True, nogil=True)
def bn2_conv2_back_into(dp2, p2, arg2, z2, coef2, dz2, xp2, dzt2, dwt2, gw2, gb2, w2, dzp2, dp1, arg1, z1,
                        coef1, row1, unit):
    # dp2 -> (pool2, ELU, BN2)' -> dz2 -> conv2's gradients gw2, gb2 and dp1 -> BN1's sums of dy and
    # dy*xhat (through pool1 and ELU) into row1; unit as in bn1_conv2_moments_into
    bnpool.bn_unpool_backward_into(dp2, p2, np.int64(0), arg2, z2, coef2, dz2, unit)
    conv16.conv16_backward_dw_into(dz2, xp2, dzt2, dwt2)
    conv16.conv16_grads_finish_into(dwt2, dzt2, gw2, gb2)
    conv16.conv16_backward_dx_into(dz2, w2, dzp2, dp1)
    bnpool.bn_unpool_sums_into(dp1, xp2, np.int64(2), arg1, z1, coef1, row1)


@njit(cache=True, nogil=True)
def bn1_conv1_back_into(dp1, xp2, arg1, z1, coef1, dz1, xp1, gw1, gb1, unit):
    # dp1 -> (pool1, ELU, BN1)' -> dz1 -> conv1's gradients gw1, gb1 (the input layer: no dx); unit
    # as in bn1_conv2_moments_into
    bnpool.bn_unpool_backward_into(dp1, xp2, np.int64(2), arg1, z1, coef1, dz1, unit)
    conv32.conv32_backward_dw_into(dz1, xp1, gw1, gb1)
