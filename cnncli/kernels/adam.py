"""Adam/AdamW's update in one fused pass over the flat buffers (optim.Optimizer calls it): per
element, the operations of optim's NumPy reference sequence in the same order, so the same bits.
Not the optimizer's state or schedule (optim.py).

Shape legend: P parameters (one flat buffer each for p, g, m, v).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def _adam_element(pi, gi, m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step):
    # moments m[i], v[i] updated in place   ->   the new parameter value
    mi = m[i] + (gi - m[i]) * one_m_b1
    vi = v[i] * b2 + (gi * gi) * one_m_b2
    m[i] = mi
    v[i] = vi
    return pi + (mi / ((np.sqrt(vi) / bias2_sqrt) + eps)) * neg_step


@njit(cache=True, nogil=True, error_model="numpy")
def adam_step_into(p, g, m, v, decay, wd, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step):
    # p, g, m, v (P,) one flat buffer each; the scalars already in p's dtype. Per element, the same
    # operations in the same order as optim.Optimizer._adam_numpy's 14 NumPy passes (so the same
    # bits): decay = 1 - lr*wd (AdamW, else 1 and skipped), wd = L2 weight decay (Adam, else 0).
    # error_model="numpy" (IEEE division, no zero check) and one loop per case let it vectorize:
    # 40 us for 70k float32 parameters (the NumPy passes: 184 us).
    n = p.shape[0]
    if decay != 1:                          # AdamW: decoupled decay first
        for i in range(n):
            pi = p[i] * decay
            p[i] = _adam_element(pi, g[i], m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step)
    elif wd != 0:                           # Adam with L2: grad + wd * param
        for i in range(n):
            pi = p[i]
            p[i] = _adam_element(pi, g[i] + pi * wd, m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps,
                                 neg_step)
    else:
        for i in range(n):
            p[i] = _adam_element(p[i], g[i], m, v, i, one_m_b1, one_m_b2, b2, bias2_sqrt, eps, neg_step)
