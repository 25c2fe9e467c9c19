"""The inference path (model.Network.predict_proba): the whole network image by image in fused
kernels, BN folded into a scale and shift (batchnorm.bn_fold_into), pool and ELU on the fly.
Inference only: no argmax, no caches, no gradients (the training layers are the other modules).

Shape legend: N images, U = H*W (per-unit BN) or 1 (per-channel BN, or no BN: scale 1, shift 0),
C classes; the layers' shapes are the network's: x (N,1,32,32), w1 (6,1,5,5), w2 (16,6,5,5),
w3 (65,1024), w4 (C,65).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .activation import elu, elu_rows, logistic
from .conv16 import conv16_image
from .conv32 import conv32_image


# One image at a time, every intermediate in small per-image buffers that stay in L1/L2:
#   conv (conv32_image, conv16_image: the training path's 16-lane kernels)
#   -> +bias -> *scale + shift (BN folded; 1 and 0 without BN)
#   -> max of each 2x2 window, written straight into the next layer's padded input -> ELU (one
#   vectorized pass over that buffer; ELU(0) = 0 keeps the zero border).
# Each image is independent, so results are the same for any batch size or thread count.
# Inference only (no argmax, no caches), tested against a NumPy reference of the inference-mode
# network (tests/test_model.py) and the PyTorch twin.

@njit(inline="always")
def _pool_affine(d, W, bias, scale, shift, i, j):
    # d (H*W,) one conv map; scale/shift (U,) with U = H*W (per unit) or 1 (per map)
    #   ->   max over the 2x2 window (i,j) of (d + bias) * scale + shift (the caller applies the ELU)
    q = 2 * i * W + 2 * j
    per_unit = scale.shape[0] > 1
    u = 2 * i * W + 2 * j if per_unit else 0
    du = 1 if per_unit else 0
    dv = W if per_unit else 0
    best = (d[q] + bias) * scale[u] + shift[u]
    v = (d[q + 1] + bias) * scale[u + du] + shift[u + du]
    if v > best:
        best = v
    v = (d[q + W] + bias) * scale[u + dv] + shift[u + dv]
    if v > best:
        best = v
    v = (d[q + W + 1] + bias) * scale[u + dv + du] + shift[u + dv + du]
    if v > best:
        best = v
    return best


@njit(inline="always")
def _infer_image(x, n, w1, b1, sc1, sh1, w2, b2, sc2, sh2, flat):
    # x (N,1,32,32) image n   ->   flat[n] (1024,) = ELU(pool(bn2(conv2(ELU(pool(bn1(conv1 x))))))))
    xp = np.zeros((1, 36 * 36), x.dtype)             # (1, 36*36) padded input
    for y in range(32):
        for xx in range(32):
            xp[0, (y + 2) * 36 + xx + 2] = x[n, 0, y, xx]
    z1 = np.empty((6, 32 * 32), x.dtype)             # (6, 32*32) conv1 output
    conv32_image(xp, 0, w1, z1, 0)
    p1 = np.zeros((6, 20 * 20), x.dtype)             # (6, 20*20) padded conv2 input
    for f in range(6):
        for i in range(16):
            for j in range(16):
                p1[f, (i + 2) * 20 + j + 2] = _pool_affine(z1[f], 32, b1[f], sc1[f], sh1[f], i, j)
    elu_rows(p1)                                    # the zero border stays 0 = ELU(0)
    z2 = np.empty((16, 16 * 16), x.dtype)            # (16, 16*16) conv2 output (16-lane kernel)
    conv16_image(p1, 0, w2, z2, 0)
    for f in range(16):
        for i in range(8):
            for j in range(8):
                flat[n, f * 64 + i * 8 + j] = _pool_affine(z2[f], 16, b2[f], sc2[f], sh2[f], i, j)
    elu_rows(flat[n:n + 1])


@njit(cache=True, nogil=True)
def infer_features_into(x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, flat):
    # x (N,1,32,32), w1 (6,1,5,5), b1 (6,), sc1/sh1 (6,U1), w2 (16,6,5,5), b2 (16,), sc2/sh2 (16,U2)
    #   ->   flat (N,1024): the C-order flattened input of fc1. U = H*W (unit BN) or 1.
    # One thread; model.predict_proba hands blocks of images to the worker threads (kernels.threads).
    for n in range(x.shape[0]):
        _infer_image(x, n, w1, b1, sc1, sh1, w2, b2, sc2, sh2, flat)


@njit(inline="always")
def _infer_head_row(z3, n, b3, sc3, sh3, w4, b4, a, probs):
    # z3 (N,65) fc1 output without bias, row n   ->   probs[n] (C,) = sigmoid(fc2(ELU(bn3(z3[n] + b3))))
    for d in range(a.shape[0]):
        a[d] = elu((z3[n, d] + b3[d]) * sc3[d] + sh3[d])
    for c in range(w4.shape[0]):
        v = b4[c]
        for d in range(a.shape[0]):
            v += w4[c, d] * a[d]
        probs[n, c] = logistic(v)


@njit(cache=True)
def infer_head_into(z3, b3, sc3, sh3, w4, b4, probs):
    # z3 (N,65) = flat @ fc1.w.T (no bias), b3 (65,), sc3/sh3 (65,), w4 (C,65), b4 (C,)
    #   ->   probs (N,C) = sigmoid(fc2(ELU(bn3(z3 + b3))))
    a = np.empty(z3.shape[1], z3.dtype)              # (65,) one image's fc1 activation
    for n in range(z3.shape[0]):
        _infer_head_row(z3, n, b3, sc3, sh3, w4, b4, a, probs)


@njit(cache=True, nogil=True)
def infer_fc1_into(flat, w3, z3):
    # flat (N,1024), w3 (65,1024) C-contiguous   ->   z3 (N,65) = flat @ w3.T (no bias), for a few
    # images on the calling thread (no BLAS call). Each dot product sums in 8 interleaved partial
    # sums, then those in order: eight scalar chains over blocks of 8 (plain range indices: no
    # negative-index fix-ups), which the SLP vectorizer turns into one 8-lane vector (8.7 us for
    # 65 x 1024 instead of 28-40 us through BLAS).
    N = flat.shape[0]
    D, I = w3.shape
    J = I // 8
    wb = w3.reshape((D, J, 8))                       # (65,128,8) blocks of 8 inputs
    for n in range(N):
        fb = flat[n].reshape((J, 8))                 # (128,8)
        for d in range(D):
            p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = flat.dtype.type(0)
            for j in range(J):
                p0 += wb[d, j, 0] * fb[j, 0]
                p1 += wb[d, j, 1] * fb[j, 1]
                p2 += wb[d, j, 2] * fb[j, 2]
                p3 += wb[d, j, 3] * fb[j, 3]
                p4 += wb[d, j, 4] * fb[j, 4]
                p5 += wb[d, j, 5] * fb[j, 5]
                p6 += wb[d, j, 6] * fb[j, 6]
                p7 += wb[d, j, 7] * fb[j, 7]
            z3[n, d] = p0 + p1 + p2 + p3 + p4 + p5 + p6 + p7
