"""The inference path (model.Network.predict_proba): the whole network image by image in fused
kernels, BN folded into a scale and shift, pool and ELU on the fly. Inference only: no argmax, no
caches, no gradients (the training layers are the other modules).
"""

# Shape legend: N images, L chunks of at most M images, U = H*W (per-unit BN) or 1 (per-channel BN,
# or no BN: scale 1, shift 0), C classes; the layers' shapes are the network's: x (N,1,32,32),
# w1 (6,1,5,5), w2 (16,6,5,5), w3 (65,1024), w4 (C,65).

from __future__ import annotations

import numpy as np
from numba import literally, njit

from .activation import elu, logistic, velu
from .aligned import ALIGN, carve64
from .conv16 import conv16_image
from .conv32 import conv32_image
from .fc import fc_forward_loop_into
from .pool import _positions, _window_max_v, _windows
from .simd import vadd, vload, vmul, vsplat, vstore
from .sync import COUNTERS, next_shard

CHUNKS = 0                      # the counter of a job's sync array that hands out the chunks
SYNC_SIZE = COUNTERS + 1


# One image at a time, every intermediate in small per-image buffers that stay in L1/L2:
#   conv (conv32_image, conv16_image: the training path's 16-lane kernels)
#   -> +bias -> *scale + shift (BN folded; 1 and 0 without BN)
#   -> max of each 2x2 window -> ELU, 16 windows per vector (activation.velu), written straight
#   into the next layer's padded input (whose zero border is never written: 0 = ELU(0)).
# Each image is independent, so results are the same for any batch size, chunk or thread count.
# One call per thread (model.predict_proba): each takes chunks of images from an atomic counter
# (sync.next_shard), so a batch takes the GIL once per thread, and the chunks' sizes
# (chunk_bounds) leave no thread finishing a big one alone.
# Inference only (no argmax, no caches), tested against a NumPy reference of the inference-mode
# network (tests/test_model.py) and the PyTorch twin.

@njit(inline="always")
def _affine(d, q, b, scale, shift, u, per_unit):
    # 16 values of d from flat offset q: (d + b) * scale + shift, rounded step by step as the
    # scalar expression; scale/shift (F,U): from flat offset u (per unit) or row u (per map, U = 1)
    if per_unit:
        sc, sh = vload(scale, u), vload(shift, u)
    else:
        sc, sh = vsplat(scale[u, 0]), vsplat(shift[u, 0])
    return vadd(vmul(vadd(vload(d, q), b), sc), sh)


@njit(inline="always")
def _pool_elu_map(z, f, W, bias, scale, shift, per_unit, out, at, row):
    # z (F,W*W) conv maps, map f; scale/shift (F,U)   ->   ELU(max of each 2x2 window of the
    # affine map) into out (flat offsets): block k of 16 pooled values at out[at + k * row].
    # W = 32: block k = pooled row k (row = the padded row's stride); W = 16: pooled rows 2k, 2k+1
    # of 8 (row = 16); per_unit: scale.shape[1] > 1, a constant of the caller's loop
    S = W * W
    b = vsplat(bias)
    pos = _positions(z)
    for k in range(S // 64):
        q = f * S + k * 64
        u = q if per_unit else f
        v0 = _affine(z, q, b, scale, shift, u, per_unit)
        v1 = _affine(z, q + 16, b, scale, shift, u + 16 * per_unit, per_unit)
        v2 = _affine(z, q + 32, b, scale, shift, u + 32 * per_unit, per_unit)
        v3 = _affine(z, q + 48, b, scale, shift, u + 48 * per_unit, per_unit)
        p0, p1, p2, p3 = _windows(W, v0, v1, v2, v3)
        best, _ = _window_max_v(p0, p1, p2, p3, pos)    # (the training path's max; no argmax here)
        vstore(out, at + k * row, velu(best))


@njit(nogil=True)
def _infer_image(x, n, w1, b1, sc1, sh1, w2, b2, sc2, sh2, per_unit, flat, row, xp, z1, p1, z2):
    # x (N,1,32,32) image n   ->   flat[row] (1024,) = ELU(pool(bn2(conv2(ELU(pool(bn1(conv1 x))))))));
    # xp (1,36*36) and p1 (6,20*20) zero borders, z1 (6,32*32), z2 (16,16*16) scratch. per_unit: a
    # literal of each caller (numba compiles one copy per value, its tests folded away). Not inline:
    # numba copies an inlined callee's whole IR into its caller, seconds of first-run compile
    literally(per_unit)
    for y in range(32):
        for xx in range(32):
            xp[0, (y + 2) * 36 + xx + 2] = x[n, 0, y, xx]
    conv32_image(xp, 0, w1, z1, 0)
    for f in range(6):
        _pool_elu_map(z1, f, 32, b1[f], sc1, sh1, per_unit, p1, f * 400 + 2 * 20 + 2, 20)
    conv16_image(p1, 0, w2, z2, 0)
    for f in range(16):
        _pool_elu_map(z2, f, 16, b2[f], sc2, sh2, per_unit, flat, row * 1024 + f * 64, 16)


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


@njit(inline="always")
def _infer_chunks(sync, bounds, x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, w3, zero3, b3, sc3, sh3, w4, b4, probs,
                  per_unit):
    # sync (SYNC_SIZE,) int64 zeroed per job, bounds (L+1,) int64: chunk j is images bounds[j]:bounds[j+1];
    # x (N,1,32,32); w1 (6,1,5,5), b1 (6,), sc1/sh1 (6,U1), w2 (16,6,5,5), b2 (16,), sc2/sh2 (16,U2),
    # w3 (65,1024), zero3 (65,) zeros, b3/sc3/sh3 (65,), w4 (C,65), b4 (C,)   ->   probs (N,C).
    # Each calling thread takes the next chunk from sync's counter until none is left: the features
    # image by image, fc1 over the chunk in the training path's 16-lane loop (fc.fc_forward_loop_into,
    # bias 0: infer_head_into adds b3; its sums do not depend on how the images are grouped), the
    # head. per_unit: the literal of the kernel below that inlines this (small: _infer_image is a call)
    f = x.dtype
    M = 1
    for j in range(bounds.shape[0] - 1):
        M = max(M, bounds[j + 1] - bounds[j])
    U3 = w3.shape[0]
    # this thread's scratch in one zeroed buffer, each array from a 64-byte boundary (aligned.py):
    # numba's np.empty lands 0 or 32 bytes past one, and with xp 32 bytes past, batch-128 inference
    # on the AVX2 VM of docs/performance.md ran ~28,000 img/s on 2 threads instead of ~34,000
    # (each array's size a multiple of 16 elements, so each next one starts on a boundary too)
    at_z1 = 36 * 36
    at_p1 = at_z1 + 6 * 32 * 32
    at_z2 = at_p1 + 6 * 20 * 20
    at_flat = at_z2 + 16 * 16 * 16
    at_z3 = at_flat + M * 1024
    buf = np.zeros(at_z3 + M * U3 + ALIGN // x.itemsize, f)
    xp = carve64(buf, 0, at_z1).reshape(1, 36 * 36)                 # (1,36*36) zero border
    z1 = carve64(buf, at_z1, 6 * 1024).reshape(6, 32 * 32)          # (6,32*32)
    p1 = carve64(buf, at_p1, 6 * 400).reshape(6, 20 * 20)           # (6,20*20) zero borders
    z2 = carve64(buf, at_z2, 16 * 256).reshape(16, 16 * 16)         # (16,16*16)
    flat = carve64(buf, at_flat, M * 1024).reshape(M, 1024)         # (M,1024) fc1's input, a chunk's rows
    z3 = carve64(buf, at_z3, M * U3).reshape(M, U3)                 # (M,65) fc1's output
    while True:
        j, a, b = next_shard(sync, CHUNKS, bounds)
        if j < 0:
            break
        for n in range(a, b):
            _infer_image(x, n, w1, b1, sc1, sh1, w2, b2, sc2, sh2, per_unit, flat, n - a, xp, z1, p1, z2)
        fc_forward_loop_into(flat[:b - a], w3, zero3, z3[:b - a])
        infer_head_into(z3[:b - a], b3, sc3, sh3, w4, b4, probs[a:b])


@njit(cache=True, nogil=True)
def infer_chunks_into(sync, bounds, x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, w3, zero3, b3, sc3, sh3, w4, b4, probs):
    # _infer_chunks without BN or with per-channel BN: U1 = U2 = 1
    _infer_chunks(sync, bounds, x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, w3, zero3, b3, sc3, sh3, w4, b4, probs, False)


@njit(cache=True, nogil=True)
def infer_chunks_unit_into(sync, bounds, x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, w3, zero3, b3, sc3, sh3, w4, b4,
                           probs):
    # _infer_chunks with per-unit BN: U1 = 1024, U2 = 256. A kernel of its own, so that the other
    # networks never compile this copy of the conv part
    _infer_chunks(sync, bounds, x, w1, b1, sc1, sh1, w2, b2, sc2, sh2, w3, zero3, b3, sc3, sh3, w4, b4, probs, True)


def chunk_bounds(n: int, threads: int, largest: int = 8) -> np.ndarray:
    """(L+1,) int64 first images of the chunks of n images for `threads` threads: guided, each chunk
    a share of what is left (at most `largest`, at least 1), so the chunks shrink towards the end
    and no thread is left finishing a big one alone. Only the timing depends on it: every image
    gets the same bits in any chunk."""
    bounds, a = [0], 0
    while a < n:
        a += min(largest, max(1, -(-(n - a) // (2 * threads))))
        bounds.append(a)
    return np.array(bounds, np.int64)
