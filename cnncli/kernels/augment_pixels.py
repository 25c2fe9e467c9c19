"""One image's augmentation pixels under one row of parameters: the fill, the bilinear warp, the
brightness/contrast jitter, noise and erasing. It does not draw the parameters (augment_draw.py),
loop over a batch or hand work to threads (augment.py and the one-call steps do).
"""

# One image's augmentation pixels, the numba kernels augment.py's batch kernels run per image:
# the fill (the median of the image's border), the bilinear warp through a frame of that fill, the
# brightness/contrast jitter, noise and erasing -- all under one row of parameters.
#
# Shape legend: H = W = 32 rows/columns, P parameters per image (P_*), B = 128 border samples of one
# image (its 4 edges, corners twice, as data.resize_gray pads), G = 3 the frame of fill values around
# an image in the sampling scratch.
#
# Fill value: a sample that falls outside the image (and an erased rectangle) takes the median of the
# image's own border pixels, the value `data.resize_gray` pads letterboxed images with: the background
# of that image, so a shifted or rotated glyph lands on its own background (dark-on-light and
# light-on-dark alike) instead of on a black/grey band or on edge streaks that clamping would smear
# from a stroke touching the border.

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .simd import LANES, vadd, vfloor, vhsum, vload, vmul, vsplat, vstore, vsub, vwiden
from .simdlanes import vconvert, vgather_pair, vsel_gt

SIZE = 32
CENTER = (SIZE - 1) / 2.0           # rotation/scale/shear centre in pixel-index coordinates
BORDER = 4 * SIZE                   # B: border samples per image
FRAME = 3                           # G: fill frame around an image (coordinates clamp to [-2, 33])
PADDED = SIZE + 2 * FRAME
# one image's parameters, the columns of augment's P (N,P), as the kernels here apply them
(P_GEO, P_TX, P_TY, P_ROT, P_SCALE, P_SHEAR, P_FLIPX, P_FLIPY, P_JITTER, P_BRIGHT, P_CONTRAST,
 P_NOISE_STD, P_NOISE_SLOT, P_ER_TOP, P_ER_LEFT, P_ER_H, P_ER_W) = range(17)
N_PARAMS = 17


@njit(cache=True)
def _select(buf, k, lo, hi):
    """Partially order buf[lo:hi+1] so that buf[k] holds its k-th smallest value and nothing before k is
    larger (quickselect, median-of-three pivot). Each round is two branch-free passes: the values
    below the pivot to the front, then those equal to it after them (a swap every element, the
    count moved by the comparison): no mispredicted branches, and runs of equal values end a round
    instead of costing one each. Linear on average, no allocation."""
    while lo < hi:
        mid = (lo + hi) // 2
        a, b, c = buf[lo], buf[mid], buf[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        below = lo
        for i in range(lo, hi + 1):
            v = buf[i]
            buf[i] = buf[below]
            buf[below] = v
            below += v < pivot
        equal = below
        for i in range(below, hi + 1):
            v = buf[i]
            buf[i] = buf[equal]
            buf[equal] = v
            equal += v == pivot
        if k < below:
            hi = below - 1
        elif k >= equal:
            lo = equal
        else:
            return


@njit(cache=True)
def _border_median(img, buf):
    """Median of the B border samples of img (H,W) (4 edges, corners twice); buf (B,) float64 scratch."""
    n = img.shape[0]
    lo = hi = float(img[0, 0])
    for k in range(n):
        buf[k], buf[n + k] = img[0, k], img[n - 1, k]
        buf[2 * n + k], buf[3 * n + k] = img[k, 0], img[k, n - 1]
        lo = min(lo, buf[k], buf[n + k], buf[2 * n + k], buf[3 * n + k])
        hi = max(hi, buf[k], buf[n + k], buf[2 * n + k], buf[3 * n + k])
    if lo == hi:                              # a flat border (letterboxed, synthetic): no selection
        return lo
    m = buf.shape[0] // 2
    _select(buf, m, 0, buf.shape[0] - 1)      # buf[:m] <= buf[m] <= buf[m+1:]
    below = buf[0]
    for k in range(1, m):
        below = max(below, buf[k])
    return 0.5 * (below + buf[m])


@njit(cache=True)
def _frame(img, pad, fill):
    """pad (H+2G,W+2G) = img (H,W) inside a frame of `fill` G wide (plain loops: LLVM vectorizes
    them better than a simd.vstore version)."""
    H, W = img.shape
    for r in range(pad.shape[0]):
        inside = FRAME <= r < FRAME + H
        for c in range(pad.shape[1]):
            if inside and FRAME <= c < FRAME + W:
                pad[r, c] = img[r - FRAME, c - FRAME]
            else:
                pad[r, c] = fill


_COLUMNS = np.arange(SIZE, dtype=np.float64)     # (W,) 0, 1, .. 31: a row's column numbers, LANES at a time


@njit(cache=True)
def _k_warp(img, pad, out, q, fill):
    """out (H,W) = img (H,W) sampled bilinearly through the inverse map of parameter row q (P,).
    pad (H+2G,W+2G) scratch: the image inside a frame of `fill` G wide; a coordinate is clamped to
    the frame, so a neighbour outside the image reads `fill` without a branch. The source coordinate
    is affine in the column: per row a start and a step. LANES columns at a time (simd): the
    coordinates in float64 (clamped, floored; the flat pad index is a whole float64), the four taps
    gathered, the fractions and the interpolation in the image's dtype -- the arithmetic of the
    scalar formula, lane by lane (W is a multiple of LANES)."""
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
    flat, dst = pad.ravel(), out.ravel()           # (PADDED*PADDED,), (H*W,)
    dx0 = -CENTER - q[P_TX]                        # dx of column 0
    lo, hx, hy = vsplat(FRAME - 2.0), vsplat(FRAME + W + 1.0), vsplat(FRAME + H + 1.0)  # clamp range (>= 1)
    ax, ay, rows = vsplat(i00), vsplat(i10), vsplat(float(P))
    for r in range(H):
        dy = r - CENTER - q[P_TY]
        bx = vsplat(i00 * dx0 + i01 * dy + (CENTER + FRAME))   # source x, y of column 0, in pad coordinates
        by = vsplat(i10 * dx0 + i11 * dy + (CENTER + FRAME))
        for c in range(0, W, LANES):
            col = vload(_COLUMNS, c)
            sx = vadd(bx, vmul(ax, col))
            sx = vsel_gt(sx, hx, hx, vsel_gt(sx, lo, sx, lo))  # min(max(sx, lo), hx)
            sy = vadd(by, vmul(ay, col))
            sy = vsel_gt(sy, hy, hy, vsel_gt(sy, lo, sy, lo))
            xa, ya = vfloor(sx), vfloor(sy)
            at = vadd(vmul(ya, rows), xa)              # flat pad index of the top-left tap (exact)
            fx, fy = vconvert(vsub(sx, xa), flat), vconvert(vsub(sy, ya), flat)
            a0, a1 = vgather_pair(flat, at, 0)
            b0, b1 = vgather_pair(flat, at, P)
            top = vadd(a0, vmul(vsub(a1, a0), fx))
            bottom = vadd(b0, vmul(vsub(b1, b0), fx))
            vstore(dst, r * W + c, vadd(top, vmul(vsub(bottom, top), fy)))


@njit(cache=True)
def _k_values(out, q, noise, at, fill):
    """In place on out (H,W): contrast about the mean and brightness, then noise (noise[at : at+H*W],
    when at >= 0), in one pass (v*contrast + (1-contrast)*mean + brightness + std*noise); then erasing."""
    H, W = out.shape
    gain, shift = 1.0, 0.0
    if q[P_JITTER] > 0.0:
        flat = out.ravel()                         # (H*W,) the mean: LANES float64 partial sums, then theirs
        acc = vwiden(vload(flat, 0))
        for k in range(LANES, H * W, LANES):
            acc = vadd(acc, vwiden(vload(flat, k)))
        mean = vhsum(acc) / (H * W)
        gain, shift = q[P_CONTRAST], (1.0 - q[P_CONTRAST]) * mean + q[P_BRIGHT]
    if at >= 0:
        std = q[P_NOISE_STD]
        for r in range(H):
            for c in range(W):
                out[r, c] = out[r, c] * gain + shift + std * noise[at + r * W + c]
    elif q[P_JITTER] > 0.0:
        for r in range(H):
            for c in range(W):
                out[r, c] = out[r, c] * gain + shift
    top, left = int(q[P_ER_TOP]), int(q[P_ER_LEFT])
    for r in range(top, top + int(q[P_ER_H])):
        for c in range(left, left + int(q[P_ER_W])):
            out[r, c] = fill


@njit(cache=True)
def augment_image(img, q, noise, at, out, border, pad, fills, m):
    """out (H,W) = img (H,W) augmented under parameters q (P,), its noise noise[at:] (at < 0: none);
    scratch border (B,) float64 and pad (H+2G,W+2G) of img's dtype. fills (M,) float64 keeps each
    dataset image's fill once computed (NaN: not yet), img being image m; m < 0: no such cache."""
    fill = 0.0
    if q[P_GEO] > 0.0 or q[P_ER_H] > 0.0:
        if m >= 0 and not math.isnan(fills[m]):
            fill = fills[m]
        else:
            fill = _border_median(img, border)
            if m >= 0:
                fills[m] = fill
    if q[P_GEO] > 0.0:
        _k_warp(img, pad, out, q, fill)
    else:
        for r in range(img.shape[0]):             # (a slice assignment here compiles in ~5 s)
            for c in range(img.shape[1]):
                out[r, c] = img[r, c]
    _k_values(out, q, noise, at, fill)
