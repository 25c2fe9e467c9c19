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
    # bn_coef_forward_into for the statistics d0 <= d < d1 only (each statistic's own operations),
    # through views that start at d0: an index counted from 0 is one LLVM knows is not negative,
    # so no wrap-around test stops it vectorizing the loop (an index from a runtime d0 ran 2.7x slower)
    D, E = mean.shape[0], coef.shape[1]
    rep = E // D
    mu, iv, ga, be = mean[d0:d1], invstd[d0:d1], gamma[d0:d1], beta[d0:d1]      # (d1-d0,) each
    if rep == 1:                                 # per unit: one loop LLVM vectorizes
        cm, ci, ca, cb = coef[M_ROW, d0:d1], coef[INV_ROW, d0:d1], coef[A_ROW, d0:d1], coef[BETA_ROW, d0:d1]
        for i in range(d1 - d0):
            cm[i] = mu[i]
            ci[i] = iv[i]
            ca[i] = ga[i] * iv[i]
            cb[i] = be[i]
        return
    for i in range(d1 - d0):
        m, inv, a, b = mu[i], iv[i], ga[i] * iv[i], be[i]
        e0 = (d0 + i) * rep
        cm, ci, ca, cb = coef[M_ROW, e0:e0 + rep], coef[INV_ROW, e0:e0 + rep], coef[A_ROW, e0:e0 + rep], \
            coef[BETA_ROW, e0:e0 + rep]
        for e in range(rep):
            cm[e] = m
            ci[e] = inv
            ca[e] = a
            cb[e] = b


@njit(cache=True, nogil=True)
def bn_coef_backward_into(invstd, gamma, sums, M, coef):
    # invstd (D,) float64, gamma (D,), sums (2D,) float64 [sum dy | sum dy*xhat] of the batch, M
    #   ->   coef rows B = -gamma*inv*sum(dy)/M, G = -gamma*inv*sum(dy*xhat)/M (dtype, repeated as above)
    bn_coef_backward_range(invstd, gamma, sums, M, coef, 0, invstd.shape[0])


@njit(inline="always")
def bn_coef_backward_range(invstd, gamma, sums, M, coef, d0, d1):
    # bn_coef_backward_into for the statistics d0 <= d < d1 only (views from d0, as above)
    D, E = invstd.shape[0], coef.shape[1]
    rep = E // D
    iv, ga, sdy, sdyx = invstd[d0:d1], gamma[d0:d1], sums[d0:d1], sums[D + d0:D + d1]   # (d1-d0,) each
    if rep == 1:                                 # per unit: one loop LLVM vectorizes
        cb, cg = coef[B_ROW, d0:d1], coef[G_ROW, d0:d1]
        for i in range(d1 - d0):
            f = ga[i] * iv[i] / M
            cb[i] = -f * sdy[i]
            cg[i] = -f * sdyx[i]
        return
    for i in range(d1 - d0):
        f = ga[i] * iv[i] / M
        b, g = -f * sdy[i], -f * sdyx[i]
        e0 = (d0 + i) * rep
        cb, cg = coef[B_ROW, e0:e0 + rep], coef[G_ROW, e0:e0 + rep]
        for e in range(rep):
            cb[e] = b
            cg[e] = g
