"""Training-time augmentation of a normalized input batch: one Numba kernel over the images.

Random affine (shift, rotation, scale, shear) and flips composed into one inverse map per image and
sampled once (bilinear), then brightness/contrast jitter, Gaussian noise and random erasing. The draws
are a pure function of (seed, epoch, step). It does not load, batch or normalize images, and never
runs for validation, eval or predict.

Shape legend: N images, H = W = 32 rows/columns, K uniforms per image (U_*), P parameters per image
(P_*), B = 128 border samples of one image (its 4 edges, corners twice, as data.resize_gray pads),
G = 3 the frame of fill values around an image in the sampling scratch.

Fill value: a sample that falls outside the image (and an erased rectangle) takes the median of the
image's own border pixels, the value `data.resize_gray` pads letterboxed images with: the background
of that image, so a shifted or rotated glyph lands on its own background (dark-on-light and
light-on-dark alike) instead of on a black/grey band or on edge streaks that clamping would smear
from a stroke touching the border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import kernels as _kernels  # noqa: F401  (sets numba's environment before numba is imported)
from numba import int64, njit, uint64  # noqa: E402

SIZE = 32
CENTER = (SIZE - 1) / 2.0           # rotation/scale/shear centre in pixel-index coordinates
BORDER = 4 * SIZE                   # B: border samples per image
FRAME = 3                           # G: fill frame around an image (coordinates clamp to [-2, 33])
PADDED = SIZE + 2 * FRAME
ERASE_ASPECT = (0.3, 3.3)           # log-uniform aspect-ratio range of an erased rectangle (torchvision's)

# uniforms per image, columns of U (N,K), drawn as one block so changing one setting moves no other draw
(U_AFFINE, U_TX, U_TY, U_ROT, U_SCALE, U_SHEAR, U_HFLIP, U_VFLIP, U_JITTER, U_BRIGHT, U_CONTRAST,
 U_NOISE, U_ERASE, U_AREA, U_ASPECT, U_TOP, U_LEFT, U_NOISE_AT) = range(18)
K_UNIFORMS = 18
NOISE_POOL = 1 << 16                # standard normals drawn once per Augmenter; an image's noise is a window
# concrete per-image parameters, columns of P (N,P), as the kernel applies them
(P_GEO, P_TX, P_TY, P_ROT, P_SCALE, P_SHEAR, P_FLIPX, P_FLIPY, P_JITTER, P_BRIGHT, P_CONTRAST,
 P_NOISE_STD, P_NOISE_SLOT, P_ER_TOP, P_ER_LEFT, P_ER_H, P_ER_W) = range(17)
N_PARAMS = 17


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
        a, f, j, n, e = aug["affine"], aug["flip"], aug["jitter"], aug["noise"], aug["erase"]
        return cls(affine_p=a["p"], shift=a["shift"], rotate=a["rotate"], scale=tuple(a["scale"]),
                   shear=a["shear"], flip_h=f["horizontal"], flip_v=f["vertical"], jitter_p=j["p"],
                   brightness=j["brightness"], contrast=j["contrast"], noise_p=n["p"], noise_std=n["std"],
                   erase_p=e["p"], erase_scale=tuple(e["scale"]))

    def vector(self, pixel_std: float) -> np.ndarray:
        """(16,) float64 for the kernels; intensities divided by the normalization std (input units)."""
        return np.array([self.affine_p, self.shift, math.radians(self.rotate), self.scale[0], self.scale[1],
                         math.radians(self.shear), self.flip_h, self.flip_v, self.jitter_p,
                         self.brightness / pixel_std, self.contrast, self.noise_p, self.noise_std / pixel_std,
                         self.erase_p, self.erase_scale[0], self.erase_scale[1]], dtype=np.float64)


@njit(cache=True)
def _k_params(u, s, p):
    """Uniforms u (N,K) and settings s (16,) -> per-image parameters p (N,P); returns the noise count."""
    slots = 0
    lo_r, hi_r = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    for i in range(u.shape[0]):
        aff = u[i, U_AFFINE] < s[0]
        p[i, P_TX] = (2.0 * u[i, U_TX] - 1.0) * s[1] if aff else 0.0
        p[i, P_TY] = (2.0 * u[i, U_TY] - 1.0) * s[1] if aff else 0.0
        p[i, P_ROT] = (2.0 * u[i, U_ROT] - 1.0) * s[2] if aff else 0.0
        p[i, P_SCALE] = s[3] + u[i, U_SCALE] * (s[4] - s[3]) if aff else 1.0
        p[i, P_SHEAR] = (2.0 * u[i, U_SHEAR] - 1.0) * s[5] if aff else 0.0
        p[i, P_FLIPX] = -1.0 if u[i, U_HFLIP] < s[6] else 1.0
        p[i, P_FLIPY] = -1.0 if u[i, U_VFLIP] < s[7] else 1.0
        p[i, P_GEO] = 1.0 if (aff or p[i, P_FLIPX] < 0 or p[i, P_FLIPY] < 0) else 0.0
        jit = u[i, U_JITTER] < s[8]
        p[i, P_JITTER] = 1.0 if jit else 0.0
        p[i, P_BRIGHT] = (2.0 * u[i, U_BRIGHT] - 1.0) * s[9] if jit else 0.0
        p[i, P_CONTRAST] = 1.0 + (2.0 * u[i, U_CONTRAST] - 1.0) * s[10] if jit else 1.0
        noisy = u[i, U_NOISE] < s[11] and s[12] > 0.0
        p[i, P_NOISE_STD] = s[12] if noisy else 0.0
        p[i, P_NOISE_SLOT] = slots if noisy else -1.0
        slots += 1 if noisy else 0
        h = w = 0
        if u[i, U_ERASE] < s[13]:
            area = (s[14] + u[i, U_AREA] * (s[15] - s[14])) * SIZE * SIZE
            ratio = math.exp(lo_r + u[i, U_ASPECT] * (hi_r - lo_r))
            h = min(max(int(round(math.sqrt(area * ratio))), 1), SIZE)
            w = min(max(int(round(math.sqrt(area / ratio))), 1), SIZE)
        p[i, P_ER_H], p[i, P_ER_W] = h, w
        p[i, P_ER_TOP] = int(u[i, U_TOP] * (SIZE - h + 1)) if h else 0
        p[i, P_ER_LEFT] = int(u[i, U_LEFT] * (SIZE - w + 1)) if w else 0
    return slots


@njit(cache=True)
def _select(buf, k, lo, hi):
    """Partially sort buf[lo:hi+1] in place so buf[k] holds its k-th smallest value (quickselect with a
    median-of-three pivot: linear on average, no allocation)."""
    while lo < hi:
        mid = (lo + hi) // 2
        a, b, c = buf[lo], buf[mid], buf[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@njit(cache=True)
def _k_noise(u, p, pool, noise):
    """noise[slot] (H,W) = the window of pool (L+H*W,) at the offset drawn in u (N,K), for every noisy image."""
    for i in range(u.shape[0]):
        if p[i, P_NOISE_SLOT] >= 0.0:
            at = int(u[i, U_NOISE_AT] * NOISE_POOL)
            flat = noise[int(p[i, P_NOISE_SLOT])].ravel()
            for k in range(flat.shape[0]):
                flat[k] = pool[at + k]


@njit(cache=True)
def _border_median(img, buf):
    """Median of the B border samples of img (H,W) (4 edges, corners twice); buf (B,) float64 scratch."""
    n = img.shape[0]
    for k in range(n):
        buf[k], buf[n + k] = img[0, k], img[n - 1, k]
        buf[2 * n + k], buf[3 * n + k] = img[k, 0], img[k, n - 1]
    m = buf.shape[0] // 2
    _select(buf, m, 0, buf.shape[0] - 1)      # buf[:m] <= buf[m] <= buf[m+1:]
    below = buf[0]
    for k in range(1, m):
        below = max(below, buf[k])
    return 0.5 * (below + buf[m])


@njit(cache=True)
def _frame(img, pad, fill):
    """pad (H+2G,W+2G) = img (H,W) inside a frame of `fill` G wide."""
    H, W = img.shape
    for r in range(pad.shape[0]):
        inside = FRAME <= r < FRAME + H
        for c in range(pad.shape[1]):
            if inside and FRAME <= c < FRAME + W:
                pad[r, c] = img[r - FRAME, c - FRAME]
            else:
                pad[r, c] = fill


@njit(cache=True)
def _k_warp(img, pad, out, q, fill, idx, frac):
    """out (H,W) = img (H,W) sampled bilinearly through the inverse map of parameter row q (P,).
    pad (H+2G,W+2G) scratch: the image inside a frame of `fill` G wide; a coordinate is clamped to
    the frame, so a neighbour outside the image reads `fill` without a branch. The source coordinate
    is affine in the column: per row a start and a step. Each row runs as two loops: the coordinates
    (idx (W,) flat index into pad, frac (2,W) the fractions, in pad's dtype) in straight-line arithmetic
    that vectorizes, then the four-tap gathers and the interpolation in the image's dtype, indexed
    by unsigned integers (the taps are >= 0: no negative-index fix-up per load)."""
    cr, sr = math.cos(q[P_ROT]), math.sin(q[P_ROT])
    t = math.tan(q[P_SHEAR])
    sc = q[P_SCALE]
    # forward map M = Flip . Rot . ShearX . scale (x = column, y = row); inverse by the 2x2 formula
    m00, m01 = q[P_FLIPX] * cr * sc, q[P_FLIPX] * (cr * t - sr) * sc
    m10, m11 = q[P_FLIPY] * sr * sc, q[P_FLIPY] * (sr * t + cr) * sc
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    H, W = img.shape
    _frame(img, pad, fill)
    P = pad.shape[1]
    flat = pad.ravel()                             # (PADDED*PADDED,)
    one, below = uint64(1), uint64(P)              # the taps' offsets: next column, next row
    dx0 = -CENTER - q[P_TX]                        # dx of column 0
    lo, hx, hy = FRAME - 2.0, FRAME + W + 1.0, FRAME + H + 1.0   # clamp range in pad coordinates (>= 1)
    for r in range(H):
        dy = r - CENTER - q[P_TY]
        bx = i00 * dx0 + i01 * dy + (CENTER + FRAME)   # source x, y of column 0, in pad coordinates
        by = i10 * dx0 + i11 * dy + (CENTER + FRAME)
        for c in range(W):
            sx = min(max(bx + i00 * c, lo), hx)
            sy = min(max(by + i10 * c, lo), hy)
            xa, ya = int64(sx), int64(sy)              # sx, sy >= 1: the conversion floors
            idx[c] = ya * P + xa
            frac[0, c] = sx - xa
            frac[1, c] = sy - ya
        for c in range(W):
            k = uint64(idx[c])
            fx, fy = frac[0, c], frac[1, c]
            a0, a1 = flat[k], flat[k + one]
            b0, b1 = flat[k + below], flat[k + below + one]
            top = a0 + (a1 - a0) * fx
            bottom = b0 + (b1 - b0) * fx
            out[r, c] = top + (bottom - top) * fy


@njit(cache=True)
def _k_values(out, q, noise, fill):
    """In place on out (H,W): contrast about the mean and brightness, then noise (from noise (M,H,W)), in
    one pass (v*contrast + (1-contrast)*mean + brightness + std*noise); then erasing."""
    H, W = out.shape
    gain, shift = 1.0, 0.0
    if q[P_JITTER] > 0.0:
        mean = 0.0
        for r in range(H):
            for c in range(W):
                mean += out[r, c]
        mean /= H * W
        gain, shift = q[P_CONTRAST], (1.0 - q[P_CONTRAST]) * mean + q[P_BRIGHT]
    if q[P_NOISE_SLOT] >= 0.0:
        slot, std = int(q[P_NOISE_SLOT]), q[P_NOISE_STD]
        for r in range(H):
            for c in range(W):
                out[r, c] = out[r, c] * gain + shift + std * noise[slot, r, c]
    elif q[P_JITTER] > 0.0:
        for r in range(H):
            for c in range(W):
                out[r, c] = out[r, c] * gain + shift
    top, left = int(q[P_ER_TOP]), int(q[P_ER_LEFT])
    for r in range(top, top + int(q[P_ER_H])):
        for c in range(left, left + int(q[P_ER_W])):
            out[r, c] = fill


@njit(cache=True, nogil=True)
def _k_augment(x, p, noise, out, border, pad, idx, frac):
    """out (N,1,H,W) = augmented x (N,1,H,W) under parameters p (N,P); scratch border (N,B) float64,
    pad (N,H+2G,W+2G), idx (N,W) int64 and frac (N,2,W) of x's dtype. One thread: _augment hands
    blocks of images to the worker threads (each image depends on its own parameters only)."""
    for i in range(x.shape[0]):
        q = p[i]
        needs_fill = q[P_GEO] > 0.0 or q[P_ER_H] > 0.0
        fill = _border_median(x[i, 0], border[i]) if needs_fill else 0.0
        if q[P_GEO] > 0.0:
            _k_warp(x[i, 0], pad[i], out[i, 0], q, fill, idx[i], frac[i])
        else:
            for r in range(x.shape[2]):             # (a slice assignment here compiles in ~5 s)
                for c in range(x.shape[3]):
                    out[i, 0, r, c] = x[i, 0, r, c]
        _k_values(out[i, 0], q, noise, fill)


BLOCK = 16     # images per task handed to a worker thread


def _augment(x, p, noise, out, border, pad, idx, frac):
    """_k_augment over blocks of BLOCK images on the worker threads (kernels.threads.run_blocks)."""
    from cnncli.kernels.threads import run_blocks

    def block(r):
        _k_augment(x[r], p[r], noise, out[r], border[r], pad[r], idx[r], frac[r])

    run_blocks(block, x.shape[0], BLOCK)


def check_batch(x, dtype=None):
    """x must be a C-contiguous (N,1,32,32) float32/float64 array (of `dtype` when given)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != (1, SIZE, SIZE):
        raise ValueError(f"x must be (N,1,{SIZE},{SIZE}), got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in (np.float32, np.float64) or (dtype is not None and x.dtype != dtype):
        raise ValueError(f"x must be {np.dtype(dtype or np.float32)} (float32/float64), got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous")


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
    _augment(x, params, noise, out, np.empty((n, BORDER)), np.empty((n, PADDED, PADDED), x.dtype),
               np.empty((n, SIZE), np.int64), np.empty((n, 2, SIZE), x.dtype))
    return out


class Augmenter:
    """Augments batches into buffers it owns (grown only when a larger batch arrives).

    aug = Augmenter(settings, seed, pixel_std=preprocess["std"]); x_aug = aug(x, epoch, step)
    The result is a view of an internal buffer, overwritten by the next call.
    """

    def __init__(self, settings: AugmentSettings, seed: int, pixel_std: float = 1.0, dtype=np.float32,
                 max_batch: int = 64):
        if not pixel_std > 0:
            raise ValueError(f"pixel_std must be > 0, got {pixel_std}")
        self.settings, self.seed, self.dtype = settings, int(seed), np.dtype(dtype)
        self.vector = settings.vector(float(pixel_std))  # (16,)
        # (L+H*W,) i.i.d. standard normals, a function of the seed alone: a noisy image reads the window at a
        # uniform offset, which costs a copy instead of 1,024 normal draws (~40% of the augmentation's time)
        self.pool = np.random.default_rng([self.seed, 0x6E6F6973]).standard_normal(NOISE_POOL + SIZE * SIZE,
                                                                                    dtype=np.float32)
        self._alloc(max(int(max_batch), 1))

    def _alloc(self, cap):
        self.cap = cap
        self.uniforms = np.empty((cap, K_UNIFORMS))            # (N,K)
        self.params = np.empty((cap, N_PARAMS))                # (N,P)
        self.noise = np.empty((cap, SIZE, SIZE), np.float32)   # (N,H,W) standard normals
        self.border = np.empty((cap, BORDER))                  # (N,B)
        self.pad = np.empty((cap, PADDED, PADDED), self.dtype)  # (N,H+2G,W+2G)
        self.idx = np.empty((cap, SIZE), np.int64)             # (N,W) flat pad index of a row's taps
        self.frac = np.empty((cap, 2, SIZE), self.dtype)       # (N,2,W) their x and y fractions
        self.out = np.empty((cap, 1, SIZE, SIZE), self.dtype)  # (N,1,H,W)

    def draw(self, n, epoch, step):
        """Per-image parameters (n,P) and noise for batch `step` of `epoch` (views of the buffers)."""
        if n > self.cap:
            self._alloc(n)
        rng = np.random.default_rng([self.seed, int(epoch), int(step)])
        rng.random(out=self.uniforms[:n])
        slots = _k_params(self.uniforms[:n], self.vector, self.params[:n])
        if slots:
            _k_noise(self.uniforms[:n], self.params[:n], self.pool, self.noise)
        return self.params[:n], self.noise[:max(slots, 1)]

    def __call__(self, x, epoch, step):
        """x (N,1,32,32) of the augmenter's dtype -> augmented (N,1,32,32) (a view, reused next call)."""
        check_batch(x, self.dtype)
        n = x.shape[0]
        params, noise = self.draw(n, epoch, step)
        out = self.out[:n]
        _augment(x, params, noise, out, self.border[:n], self.pad[:n], self.idx[:n], self.frac[:n])
        return out
