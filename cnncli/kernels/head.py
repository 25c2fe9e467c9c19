"""The network's head under batch normalization, one shard in one call: fc1's BN -> ELU -> fc2 ->
sigmoid + loss, and back down to BN3's dy and the shard's sums. Not the plain head (passes.py,
plainstep.py), not the statistics.
"""

# The network's head under batch normalization, one shard in one call: fc1's BN (given the batch's
# statistics) -> ELU -> fc2 -> sigmoid + loss, and back down to BN3's dy and the shard's sums of dy
# and dy*xhat. Its pieces are kernels of batchnorm, activation, loss and fc (fc2's products the
# numba loops the plain head runs too): a shard's head is one call instead of nine, on tasks too
# short to share between threads.
#
# Shape legend: n images of the shard, U = 65 fc1 units, C classes.

from __future__ import annotations

from numba import njit

from .activation import elu_backward_into, elu_forward_into
from .batchnorm import bn_unit_grad_sums_into, bn_unit_normalize_into
from .fc import fc_narrow_dx_into, fc_narrow_forward_into
from .fcgrad import fc_grads_into
from .loss import sigmoid_bce_into


@njit(cache=True, nogil=True)
def bn_head_into(z3, mean, invstd, gamma, beta, w2, b2, labels, weights, scale, backward,
                 xhat3, y3, a3, z4, probs, dz4, dw2, db2, da3, dy3, sums):
    # z3 (n,U) fc1's output, mean invstd (U,) float64 (the batch's), gamma beta (U,), w2 (C,U),
    # b2 (C,), labels (n,) int64, weights (n,) float64, scale = 1/B
    #   ->   xhat3 y3 a3 (n,U), z4 probs dz4 (n,C), and with backward: dw2 (C,U), db2 (C,), da3 dy3
    #   (n,U), sums (2U,) float64 [sum dy3 | sum dy3*xhat3]. Returns sum of weight * loss (float64).
    n, U = z3.shape
    bn_unit_normalize_into(z3, mean, invstd, gamma, beta, xhat3, y3)
    elu_forward_into(y3.reshape(n * U), a3.reshape(n * U))
    fc_narrow_forward_into(a3, w2, b2, z4)
    loss = sigmoid_bce_into(z4, labels, weights, scale, probs, dz4)
    if backward:
        fc_grads_into(dz4, a3, dw2, db2)
        fc_narrow_dx_into(dz4, w2, da3)
        elu_backward_into(da3.reshape(n * U), a3.reshape(n * U), dy3.reshape(n * U))
        bn_unit_grad_sums_into(dy3, xhat3, sums[:U], sums[U:])
    return loss
