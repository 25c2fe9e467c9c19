"""A training image's augmentation draws (SplitMix64 uniforms of (seed, epoch, step, index), the
parameters drawn from them) and make_input_into, a batch slice's lookup + augmentation inside a
shard's task. Not the settings or the batch-level API (augment.py), nor one image's pixels
(augment_pixels.py).
"""

# A training image's augmentation draws and the step input: the per-image uniforms (SplitMix64 of
# (seed, epoch, step, index in the batch)), the parameters drawn from them, and make_input_into, the
# lookup (+ augmentation) of a slice of a batch that the one-call steps run inside each shard's task.
#
# Shape legend: M images stored, N images of a slice, H = W = 32, K uniforms per image (U_*), P
# parameters per image (P_*, augment_pixels' layout), B = 128 border samples of one image, G = 3 the
# fill frame, L the noise pool's length.

from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

from .augment_pixels import (BORDER, N_PARAMS, PADDED, SIZE, P_BRIGHT, P_CONTRAST, P_ER_H, P_ER_LEFT, P_ER_TOP,
                             P_ER_W, P_FLIPX, P_FLIPY, P_GEO, P_JITTER, P_NOISE_STD, P_ROT, P_SCALE, P_SHEAR, P_TX,
                             P_TY, augment_image)
from .lookup import lookup_batch_into

ERASE_ASPECT = (0.3, 3.3)           # log-uniform aspect-ratio range of an erased rectangle (torchvision's)

# the uniforms of an image, numbered k: image i's is _uniform(key, i, k), so changing one setting moves no other
# draw; numpy int64s, not Python ints: numba types a Python int constant passed to an njit function as a
# literal and compiles the function once per value (18 compiles of _uniform, 1.6 s of a first run's first step)
(U_AFFINE, U_TX, U_TY, U_ROT, U_SCALE, U_SHEAR, U_HFLIP, U_VFLIP, U_JITTER, U_BRIGHT, U_CONTRAST,
 U_NOISE, U_ERASE, U_AREA, U_ASPECT, U_TOP, U_LEFT, U_NOISE_AT) = np.arange(18, dtype=np.int64)
K_UNIFORMS = 18
NOISE_POOL = 1 << 16                # standard normals drawn once per Augmenter; an image's noise is a window

# how a step's input is made (make_input_into's kind; the one-call steps' `src`): given as x, made by
# the threads before the step (a Python transform), looked up from the stored images, or looked up and
# augmented
GIVEN, MADE, LOOKUP, AUGMENT = range(4)

# make_input_into's arguments where a caller has none (no fills kept, no settings, no noise pool):
# read-only to the kernels, shared
NO_FILLS, NO_SETTINGS, NO_POOL = np.empty(0), np.zeros(16), np.zeros(1, np.float32)   # (0,) (16,) (1,)

_GOLDEN = uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _mix(z):
    """SplitMix64's finalizer: a bijection of uint64 that scatters every input bit over the output."""
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@njit(cache=True)
def step_key(seed, epoch, step):
    """The uint64 key of batch `step` of `epoch` under `seed` (each mixed in turn)."""
    return _mix(_mix(_mix(uint64(seed) + _GOLDEN) + uint64(epoch)) + uint64(step))


@njit(cache=True)
def _uniform(key, i, k):
    """Uniform k of image i of the batch keyed `key`, in [0, 1) (53 bits): SplitMix64's output for
    counter i*K+k -- a pure function of (key, i, k), so any slice of a batch draws alone."""
    return float(_mix(key + uint64(i * K_UNIFORMS + k + 1) * _GOLDEN) >> uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def image_params(key, i, s, q):
    """Image i's parameters q (P,) from its uniforms and the settings s (16,); returns the offset of
    its noise window in the pool, or -1 (q[P_NOISE_SLOT] is left for the caller)."""
    aff = _uniform(key, i, U_AFFINE) < s[0]
    q[P_TX] = (2.0 * _uniform(key, i, U_TX) - 1.0) * s[1] if aff else 0.0
    q[P_TY] = (2.0 * _uniform(key, i, U_TY) - 1.0) * s[1] if aff else 0.0
    q[P_ROT] = (2.0 * _uniform(key, i, U_ROT) - 1.0) * s[2] if aff else 0.0
    q[P_SCALE] = s[3] + _uniform(key, i, U_SCALE) * (s[4] - s[3]) if aff else 1.0
    q[P_SHEAR] = (2.0 * _uniform(key, i, U_SHEAR) - 1.0) * s[5] if aff else 0.0
    q[P_FLIPX] = -1.0 if _uniform(key, i, U_HFLIP) < s[6] else 1.0
    q[P_FLIPY] = -1.0 if _uniform(key, i, U_VFLIP) < s[7] else 1.0
    q[P_GEO] = 1.0 if (aff or q[P_FLIPX] < 0 or q[P_FLIPY] < 0) else 0.0
    jit = _uniform(key, i, U_JITTER) < s[8]
    q[P_JITTER] = 1.0 if jit else 0.0
    q[P_BRIGHT] = (2.0 * _uniform(key, i, U_BRIGHT) - 1.0) * s[9] if jit else 0.0
    q[P_CONTRAST] = 1.0 + (2.0 * _uniform(key, i, U_CONTRAST) - 1.0) * s[10] if jit else 1.0
    noisy = _uniform(key, i, U_NOISE) < s[11] and s[12] > 0.0
    q[P_NOISE_STD] = s[12] if noisy else 0.0
    h = w = 0
    if _uniform(key, i, U_ERASE) < s[13]:
        lo_r, hi_r = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        area = (s[14] + _uniform(key, i, U_AREA) * (s[15] - s[14])) * SIZE * SIZE
        ratio = math.exp(lo_r + _uniform(key, i, U_ASPECT) * (hi_r - lo_r))
        h = min(max(int(round(math.sqrt(area * ratio))), 1), SIZE)
        w = min(max(int(round(math.sqrt(area / ratio))), 1), SIZE)
    q[P_ER_H], q[P_ER_W] = h, w
    q[P_ER_TOP] = int(_uniform(key, i, U_TOP) * (SIZE - h + 1)) if h else 0
    q[P_ER_LEFT] = int(_uniform(key, i, U_LEFT) * (SIZE - w + 1)) if w else 0
    return int(_uniform(key, i, U_NOISE_AT) * NOISE_POOL) if noisy else -1


@njit(cache=True, nogil=True)
def lookup_augment_into(images, idx, table, fills, out, first, key, s, pool):
    """out (N,1,H,W) = the images images[idx] (M,H,W) uint8 through table (256,) (the trainer's input
    lookup), augmented, image i as image first+i of the batch keyed `key` (its parameters from
    image_params under the settings s (16,), its noise from pool (L+H*W,)). fills (M,) float64:
    each image's fill, computed the first time it is needed (NaN until then), kept for the run (a
    batch's images are distinct, so no two threads write one entry); (0,): none kept."""
    img = np.empty((1, 1, images.shape[1], images.shape[2]), table.dtype)               # (1,1,H,W)
    q, border, pad = np.empty(N_PARAMS), np.empty(BORDER), np.empty((PADDED, PADDED), table.dtype)  # (P,) (B,)
    for i in range(idx.shape[0]):
        lookup_batch_into(images, idx[i:i + 1], table, img)
        at = image_params(key, first + i, s, q)
        m = idx[i] if fills.shape[0] else -1
        augment_image(img[0, 0], q, pool, at, out[i, 0], border, pad, fills, m)


@njit(cache=True, nogil=True)
def make_input_into(kind, images, idx, table, fills, first, key, s, pool, out):
    """out (N,1,H,W) = the input of the images idx (N,) (images first .. first+N-1 of the batch):
    kind LOOKUP: table[images[idx]]; AUGMENT: the same, augmented (lookup_augment_into's arguments);
    GIVEN and MADE write nothing (the caller has the input)."""
    if kind == LOOKUP:
        lookup_batch_into(images, idx, table, out)
    elif kind == AUGMENT:
        lookup_augment_into(images, idx, table, fills, out, first, key, s, pool)


def no_input(dtype):
    """make_input_into's arguments after kind (images, idx, table, fills, key, s, pool) for a step
    that makes no input (GIVEN, MADE): empty arrays of the types augment.StepInput passes, so one
    compiled step serves both."""
    return (np.zeros((1, SIZE, SIZE), np.uint8), np.zeros(0, np.int64), np.zeros(256, dtype), NO_FILLS,
            np.uint64(0), NO_SETTINGS, NO_POOL)
