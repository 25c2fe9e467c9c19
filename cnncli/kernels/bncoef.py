"""The per-statistic coefficients the fused BN kernels (bnpool.py) load, one row each of coef
(6, C*S) in the dtype: from the batch's mean and invstd, m, inv, a = gamma * inv and beta; from
its gradient sums, B and G (bnpool.py's docstring gives the formulas). Each statistic's value is
repeated over the positions it covers (a channel's map, or a unit's own), so per-unit and
per-channel BN are laid out alike. Not the statistics (bnstats.py), not the kernels that use them.
"""

from __future__ import annotations

from numba import njit

M_ROW, INV_ROW, A_ROW, BETA_ROW, B_ROW, G_ROW = range(6)     # the rows of coef


@njit(cache=True, nogil=True)
def bn_coef_forward_into(mean, invstd, gamma, beta, coef):
    # mean invstd (D,) float64 (the batch's), gamma beta (D,)   ->   coef (6,C*S) rows m, inv, a,
    # beta in the dtype, each statistic repeated over the C*S/D positions it covers (per channel:
    # its whole map; per unit: its own), so that the kernels load every coefficient the same way
    bn_coef_forward_range(mean, invstd, gamma, beta, coef, 0, mean.shape[0])


@njit(inline="always")
def bn_coef_forward_range(mean, invstd, gamma, beta, coef, d0, d1):
    # bn_coef_forward_into for the statistics d0 <= d < d1 only (each statistic's own operations)
    D, E = mean.shape[0], coef.shape[1]
    rep = E // D
    if rep == 1:                                 # per unit: one loop LLVM vectorizes
        for d in range(d0, d1):
            coef[M_ROW, d] = mean[d]
            coef[INV_ROW, d] = invstd[d]
            coef[A_ROW, d] = gamma[d] * invstd[d]
            coef[BETA_ROW, d] = beta[d]
        return
    for d in range(d0, d1):
        m, inv, a, b = mean[d], invstd[d], gamma[d] * invstd[d], beta[d]
        for e in range(d * rep, (d + 1) * rep):
            coef[M_ROW, e] = m
            coef[INV_ROW, e] = inv
            coef[A_ROW, e] = a
            coef[BETA_ROW, e] = b


@njit(cache=True, nogil=True)
def bn_coef_backward_into(invstd, gamma, sums, M, coef):
    # invstd (D,) float64, gamma (D,), sums (2D,) float64 [sum dy | sum dy*xhat] of the batch, M
    #   ->   coef rows B = -gamma*inv*sum(dy)/M, G = -gamma*inv*sum(dy*xhat)/M (dtype, repeated as above)
    bn_coef_backward_range(invstd, gamma, sums, M, coef, 0, invstd.shape[0])


@njit(inline="always")
def bn_coef_backward_range(invstd, gamma, sums, M, coef, d0, d1):
    # bn_coef_backward_into for the statistics d0 <= d < d1 only
    D, E = invstd.shape[0], coef.shape[1]
    rep = E // D
    if rep == 1:                                 # per unit: one loop LLVM vectorizes
        for d in range(d0, d1):
            f = gamma[d] * invstd[d] / M
            coef[B_ROW, d] = -f * sums[d]
            coef[G_ROW, d] = -f * sums[D + d]
        return
    for d in range(d0, d1):
        f = gamma[d] * invstd[d] / M
        b, g = -f * sums[d], -f * sums[D + d]
        for e in range(d * rep, (d + 1) * rep):
            coef[B_ROW, e] = b
            coef[G_ROW, e] = g
