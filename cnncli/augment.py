"""Training-time augmentation of a normalized input batch: the settings, the batch kernels, the
Augmenter and StepInput (a training step's input, made inside the step). It does not load, batch or
normalize images, never runs for validation, eval or predict, and draws nothing itself
(kernels/augment_draw.py draws, kernels/augment_pixels.py holds one image's pixel kernels).
"""

# Random affine (shift, rotation, scale, shear) and flips composed into one inverse map per image and
# sampled once (bilinear), then brightness/contrast jitter, Gaussian noise and random erasing. The draws
# are a pure function of (seed, epoch, step, the image's index in the batch). It does not load, batch
# or normalize images, and never runs for validation, eval or predict.
#
# Shape legend: N images, M stored, H = W = 32 rows/columns, P parameters per image (P_*,
# augment_pixels' layout), B = 128 border samples of one image, G = 3 the fill frame.

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .arch import check_seed
from .options import LEAVES
from . import kernels as _kernels  # noqa: F401  (sets numba's environment before numba is imported)
from numba import njit  # noqa: E402

from .kernels.augment_draw import (AUGMENT, LOOKUP, NO_FILLS, NO_POOL, NO_SETTINGS, NOISE_POOL,  # noqa: E402
                                  image_params, make_input_into, step_key)
# (the P_* columns are re-exported: tests and previews name an image's parameters through this module)
from .kernels.augment_pixels import (BORDER, N_PARAMS, PADDED, SIZE, P_BRIGHT, P_CONTRAST, P_ER_H,  # noqa: E402,F401
                                     P_ER_LEFT, P_ER_TOP, P_ER_W, P_FLIPX, P_FLIPY, P_GEO, P_JITTER, P_NOISE_SLOT,
                                     P_NOISE_STD, P_ROT, P_SCALE, P_SHEAR, P_TX, P_TY, augment_image)
from .kernels.threads import run_blocks  # noqa: E402


# each setting's config key (from_config reads it there; options.py holds its range, checked for both)
CONFIG_KEYS = {"affine_p": "augment.affine.p", "shift": "augment.affine.shift", "rotate": "augment.affine.rotate",
               "scale": "augment.affine.scale", "shear": "augment.affine.shear", "flip_h": "augment.flip.horizontal",
               "flip_v": "augment.flip.vertical", "jitter_p": "augment.jitter.p",
               "brightness": "augment.jitter.brightness", "contrast": "augment.jitter.contrast",
               "noise_p": "augment.noise.p", "noise_std": "augment.noise.std", "erase_p": "augment.erase.p",
               "erase_scale": "augment.erase.scale"}


def _number(v) -> bool:
    """A finite int or float, not a bool (config.py's float keys take no more)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class AugmentSettings:
    """Each transform's probability and range; magnitudes in pixel-intensity units (fraction of 0..1)."""

    affine_p: float = 0.0
    shift: float = 0.0              # pixels, uniform in [-shift, shift] per axis
    rotate: float = 0.0             # degrees, uniform in [-rotate, rotate]
    scale: tuple = (1.0, 1.0)       # uniform zoom factor in [lo, hi]
    shear: float = 0.0              # degrees of x-shear, uniform in [-shear, shear]
    flip_h: float = 0.0             # probability of a left-right mirror
    flip_v: float = 0.0             # probability of an up-down mirror
    jitter_p: float = 0.0
    brightness: float = 0.0         # added intensity, uniform in [-b, b] (fraction of the 0..1 range)
    contrast: float = 0.0           # factor about the image mean, uniform in [1-c, 1+c]
    noise_p: float = 0.0
    noise_std: float = 0.0          # std of added Gaussian noise (fraction of the 0..1 range)
    erase_p: float = 0.0
    erase_scale: tuple = (0.02, 0.1)  # area fraction of the erased rectangle, uniform in [lo, hi]

    @classmethod
    def from_config(cls, aug: dict) -> "AugmentSettings":
        """From the validated `augment` section of a config (config.py checks every range)."""
        def value(key):
            v = functools.reduce(lambda d, k: d[k], key.split(".")[1:], aug)
            return tuple(v) if isinstance(v, list) else v
        return cls(**{name: value(key) for name, key in CONFIG_KEYS.items()})

    def __post_init__(self):
        """Settings made in Python get the checks of their config keys (options.py: one range each)."""
        for name, key in CONFIG_KEYS.items():
            opt, v = LEAVES[key], getattr(self, name)
            pair = opt.kind == "pair"
            if pair:
                ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_number, v))
            else:
                ok = _number(v)
            if not ok:
                raise ValueError(f"AugmentSettings.{name} must be {'(lo, hi), two numbers' if pair else 'a number'}, "
                                 f"got {v!r}")
            problem = opt.check(list(v) if pair else v)
            if problem:
                raise ValueError(f"AugmentSettings.{name} must be a valid {key} ({problem}), got {v!r}")

    def vector(self, pixel_std: float) -> np.ndarray:
        """(16,) float64 for the kernels; intensities divided by the normalization std (input units)."""
        return np.array([self.affine_p, self.shift, math.radians(self.rotate), self.scale[0], self.scale[1],
                         math.radians(self.shear), self.flip_h, self.flip_v, self.jitter_p,
                         self.brightness / pixel_std, self.contrast, self.noise_p, self.noise_std / pixel_std,
                         self.erase_p, self.erase_scale[0], self.erase_scale[1]], dtype=np.float64)


@njit(cache=True)
def _k_draw(key, n, s, pool, p, noise):
    """The parameters p (n,P) of a whole batch and the noise windows of its noisy images, copied into
    noise (n,H,W) in order (P_NOISE_SLOT their row); returns the noise count."""
    slots = 0
    for i in range(n):
        at = image_params(key, i, s, p[i])
        p[i, P_NOISE_SLOT] = slots if at >= 0 else -1.0
        if at >= 0:
            flat = noise[slots].ravel()
            for k in range(flat.shape[0]):
                flat[k] = pool[at + k]
            slots += 1
    return slots


@njit(cache=True, nogil=True)
def _k_augment(x, p, noise, out):
    """out (N,1,H,W) = augmented x (N,1,H,W) under the explicit parameters p (N,P) and noise (M,H,W)
    (row P_NOISE_SLOT of an image's). One thread; scratch allocated once per call."""
    border, pad = np.empty(BORDER), np.empty((PADDED, PADDED), x.dtype)   # (B,), (H+2G,W+2G)
    flat = noise.ravel()                                                     # (M*H*W,)
    hw = x.shape[2] * x.shape[3]
    for i in range(x.shape[0]):
        q = p[i]
        at = int(q[P_NOISE_SLOT]) * hw if q[P_NOISE_SLOT] >= 0.0 else -1
        augment_image(x[i, 0], q, flat, at, out[i, 0], border, pad, border, -1)   # (no fill cache)


@njit(cache=True, nogil=True)
def _k_augment_keyed(x, out, first, key, s, pool):
    """out (N,1,H,W) = augmented x (N,1,H,W), the images first, first+1, .. of the batch keyed `key`:
    each image draws its own parameters (_image_params, settings s (16,)) and reads its noise from
    pool (L+H*W,). One thread; scratch allocated once per call."""
    q, border, pad = np.empty(N_PARAMS), np.empty(BORDER), np.empty((PADDED, PADDED), x.dtype)  # (P,) (B,)
    for i in range(x.shape[0]):
        at = image_params(key, first + i, s, q)
        augment_image(x[i, 0], q, pool, at, out[i, 0], border, pad, border, -1)   # (no fill cache)


BLOCK = 16     # images per task handed to a worker thread


def check_batch(x, dtype=None):
    """x must be a C-contiguous (N,1,32,32) float32/float64 array (of `dtype` when given)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != (1, SIZE, SIZE):
        raise ValueError(f"x must be (N,1,{SIZE},{SIZE}), got {getattr(x, 'shape', type(x).__name__)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"x must be {np.dtype(dtype)} (this Augmenter's dtype; Augmenter(..., dtype=...) "
                         f"chooses it), got {x.dtype}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (np.ascontiguousarray(x) makes it so)")


def apply_params(x, params, noise=None, out=None):
    """The kernel with explicit per-image parameters params (N,P) (tests and previews); noise (M,32,32)
    float32 holds the Gaussian draws of the images whose P_NOISE_SLOT is >= 0."""
    check_batch(x)
    n = x.shape[0]
    params = np.ascontiguousarray(params, dtype=np.float64)
    if params.shape != (n, N_PARAMS):
        raise ValueError(f"params must be ({n}, {N_PARAMS}), got {params.shape}")
    noise = np.zeros((1, SIZE, SIZE), np.float32) if noise is None else np.ascontiguousarray(noise, dtype=np.float32)
    if noise.ndim != 3 or noise.shape[1:] != (SIZE, SIZE) or int(params[:, P_NOISE_SLOT].max(initial=-1)) >= len(noise):
        raise ValueError(f"noise must be (M,{SIZE},{SIZE}) with a row for every noise slot, got {noise.shape}")
    out = np.empty_like(x) if out is None else out
    check_batch(out, x.dtype)
    if out.shape != x.shape:
        raise ValueError(f"out must be {x.shape}, got {out.shape}")
    run_blocks(lambda r: _k_augment(x[r], params[r], noise, out[r]), n, BLOCK)
    return out


class Augmenter:
    """Augments batches, each image under parameters drawn from (seed, epoch, step, its index in the batch).

    aug = Augmenter(settings, seed, pixel_std=preprocess["std"]); x_aug = aug(x, epoch, step)
    The result is a new array each call. Inside a training step,
    Network.train_step(x, y, transform=aug.bind(epoch, step))
    augments each shard's images in the shard's own task: the same pixels.
    """

    def __init__(self, settings: AugmentSettings, seed: int, pixel_std: float = 1.0, dtype=np.float32,
                 max_batch: int = 64):
        if not isinstance(settings, AugmentSettings):      # (a dict: AttributeError 'dict' has no 'vector')
            raise TypeError(f"settings must be an AugmentSettings, e.g. AugmentSettings(rotate=10.0) or "
                            f"AugmentSettings.from_config(cfg['augment']), got {type(settings).__name__}")
        if not pixel_std > 0:
            raise ValueError(f"pixel_std must be > 0, got {pixel_std}")
        self.settings, self.seed, self.dtype = settings, check_seed(seed), np.dtype(dtype)
        self.vector = settings.vector(float(pixel_std))  # (16,)
        # (L+H*W,) i.i.d. standard normals, a function of the seed alone: a noisy image reads the window at a
        # uniform offset, which costs a copy instead of 1,024 normal draws (~40% of the augmentation's time)
        self.pool = np.random.default_rng([self.seed, 0x6E6F6973]).standard_normal(NOISE_POOL + SIZE * SIZE,
                                                                                    dtype=np.float32)
        self._alloc(max(int(max_batch), 1))

    def _alloc(self, cap):
        self.cap = cap
        self.params = np.empty((cap, N_PARAMS))                # (N,P) draw()'s
        self.noise = np.empty((cap, SIZE, SIZE), np.float32)   # (N,H,W) draw()'s standard normals

    def key(self, epoch, step):
        """The np.uint64 key of batch `step` of `epoch` (step_key of the seed; typed for the kernels)."""
        return np.uint64(step_key(self.seed, int(epoch), int(step)))

    def draw(self, n, epoch, step):
        """Per-image parameters (n,P) and noise (M,H,W) of batch `step` of `epoch`, as the kernel draws
        them (views of the buffers): apply_params(x, *aug.draw(n, epoch, step)) equals aug(x, epoch, step)."""
        if n > self.cap:
            self._alloc(n)
        slots = _k_draw(self.key(epoch, step), n, self.vector, self.pool, self.params[:n],
                        self.noise)
        return self.params[:n], self.noise[:max(slots, 1)]

    def __call__(self, x, epoch, step):
        """x (N,1,32,32) of the augmenter's dtype -> augmented (N,1,32,32), a new array each call,
        in blocks of BLOCK images on the worker threads."""
        check_batch(x, self.dtype)
        n = x.shape[0]
        out, transform = np.empty((n, 1, SIZE, SIZE), self.dtype), self.bind(epoch, step)   # (N,1,H,W)
        run_blocks(lambda r: transform(r, x[r], out[r]), n, BLOCK)
        return out

    def bind(self, epoch, step, lookup=None):
        """Batch `step` of `epoch` as transform(s, x_s, out): augments the images s (a slice of the
        batch) x_s (m,1,32,32) of the augmenter's dtype into out (m,1,32,32), on the calling thread,
        with no Python per image; out may be x_s itself (each image is read whole before its output
        is written). Network.train_step(x, y, transform=...) runs it inside each shard's task;
        slices may run at once. The same pixels as __call__.
        lookup=(images (M,32,32) uint8, idx (B,) int64, table (256,) of the augmenter's dtype, fills
        (M,) float64 all NaN at first, or None): a StepInput that makes x_s itself, table[images[idx[s]]]
        augmented (x_s is ignored: pass None), in one kernel call, which the one-call steps make
        inside their own kernel; fills keeps each image's fill (the median of its border) from one
        batch to the next, for this images and table only."""
        key, vector, pool = self.key(epoch, step), self.vector, self.pool
        if lookup is None:
            def transform(s, x_s, out):
                _k_augment_keyed(x_s, out, s.start, key, vector, pool)
            transform.needs_x = True        # (it augments x: Network.train_step refuses x=None for it)
            return transform
        images, idx, table, fills = lookup
        return StepInput(AUGMENT, images, idx, table, fills, key, vector, pool)


class StepInput:
    """A training step's input made from the stored images: table[images[idx]], augmented or not.
    Called as a transform (s, x_s, out) it writes the input of the images idx[s] into out (x_s is
    ignored); the one-call steps take `kernel_args` instead and make each shard's rows inside their
    own kernel with the same function (augment_draw.make_input_into), so the same bits. kernel_args
    is None when an array is not of the types the steps are compiled for (then the threads call the
    transform before the step, as for any transform)."""

    def __init__(self, kind, images, idx, table, fills=None, key=0, vector=None, pool=None):
        if kind not in (LOOKUP, AUGMENT):
            raise ValueError(f"kind must be LOOKUP or AUGMENT, got {kind!r}")
        self.kind, self.images, self.table = kind, images, table       # (M,32,32) uint8, (256,)
        self.idx = np.ascontiguousarray(idx, dtype=np.int64)           # (B,)
        self.fills = NO_FILLS if fills is None else fills               # (M,) float64 or (0,): none kept
        # the kernels check no bounds: every index they take is checked here
        M = images.shape[0]
        if images.shape[1:] != (SIZE, SIZE) or table.shape != (256,) or self.fills.shape not in ((0,), (M,)):
            raise ValueError(f"images must be (M,{SIZE},{SIZE}), table (256,) and fills (M,) or (0,); got "
                             f"{images.shape}, {table.shape} and {self.fills.shape}")
        if self.idx.ndim != 1 or (self.idx.size and (self.idx.min() < 0 or self.idx.max() >= M)):
            raise ValueError(f"idx must be a 1-D array of indices in [0, {M}), got shape {self.idx.shape}")
        self.key = np.uint64(key)
        self.vector = NO_SETTINGS if vector is None else vector         # (16,) float64
        self.pool = NO_POOL if pool is None else pool                   # (NL,) float32
        arrays = (images, self.idx, table, self.fills, self.vector, self.pool)
        usual = (images.dtype == np.uint8 and images.ndim == 3 and table.ndim == 1 and self.fills.dtype == np.float64
                 and self.vector.dtype == np.float64 and self.pool.dtype == np.float32
                 and all(isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable for a in arrays))
        self.kernel_args = (kind, images, self.idx, table, self.fills, self.key, self.vector, self.pool) if usual \
            else None

    def __call__(self, s, x_s, out):
        make_input_into(self.kind, self.images, self.idx[s], self.table, self.fills, s.start, self.key, self.vector,
                        self.pool, out)


def lookup_input(images, idx, table) -> StepInput:
    """The step input table[images[idx]] (no augmentation) as a StepInput."""
    return StepInput(LOOKUP, images, idx, table)
