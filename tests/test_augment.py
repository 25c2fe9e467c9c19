"""cnncli.augment against a slow NumPy reference (float64), plus properties: integer shifts move pixels
exactly, identity settings leave x bitwise unchanged, erasing fills a rectangle, jitter is affine in
the values, and the draws depend on (seed, epoch, step) only, not on the thread count."""

import math

import numba
import numpy as np
import pytest

from cnncli import augment as A
from cnncli.kernels import augment_pixels

S = A.SIZE


def reference_fill(img):
    """data.resize_gray's pad value: the median of the 4 edges (corners counted twice)."""
    return float(np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))


def reference_sample(img, q):
    """Bilinear sampling of img (H,W) through the inverse of the forward map of parameter row q."""
    fill = reference_fill(img)
    th, sh, sc = q[A.P_ROT], q[A.P_SHEAR], q[A.P_SCALE]
    flip = np.diag([q[A.P_FLIPX], q[A.P_FLIPY]])
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    shear = np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    inv = np.linalg.inv(flip @ rot @ shear * sc)
    ctr = (S - 1) / 2.0
    out = np.empty((S, S))

    def at(r, c):
        return img[r, c] if 0 <= r < S and 0 <= c < S else fill

    for r in range(S):
        for c in range(S):
            sx, sy = inv @ np.array([c - ctr - q[A.P_TX], r - ctr - q[A.P_TY]]) + ctr
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            out[r, c] = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                         + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    return out, fill


def reference(x, params, noise):
    """The whole augmentation of x (N,1,S,S), image by image, in float64."""
    out = np.empty(x.shape)
    for i, q in enumerate(params):
        img = x[i, 0].astype(np.float64)
        fill = reference_fill(img)
        if q[A.P_GEO]:
            img, fill = reference_sample(img, q)
        if q[A.P_JITTER]:
            img = (img - img.mean()) * q[A.P_CONTRAST] + img.mean() + q[A.P_BRIGHT]
        if q[A.P_NOISE_SLOT] >= 0:
            img = img + q[A.P_NOISE_STD] * noise[int(q[A.P_NOISE_SLOT])]
        t, lft, h, w = (int(q[k]) for k in (A.P_ER_TOP, A.P_ER_LEFT, A.P_ER_H, A.P_ER_W))
        img[t:t + h, lft:lft + w] = fill
        out[i, 0] = img
    return out


def glyphs(n, seed=0, dtype=np.float64):
    """Letterbox-like images: a flat background per image with a random blob of strokes."""
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(n, 1, 1, 1)), S * S).reshape(n, 1, S, S)
    x[:, :, 6:26, 8:24] += rng.normal(size=(n, 1, 20, 16)) * 2
    return np.ascontiguousarray(x, dtype=dtype)


SETTINGS = A.AugmentSettings(affine_p=0.8, shift=3, rotate=25, scale=(0.8, 1.2), shear=10, flip_h=0.3,
                             flip_v=0.3, jitter_p=0.5, brightness=0.2, contrast=0.3, noise_p=0.5,
                             noise_std=0.1, erase_p=0.5, erase_scale=(0.02, 0.2))


def identity_params(n):
    p = np.zeros((n, A.N_PARAMS))
    p[:, [A.P_SCALE, A.P_FLIPX, A.P_FLIPY, A.P_CONTRAST]] = 1.0
    p[:, A.P_NOISE_SLOT] = -1.0
    return p


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_augmenter_matches_the_numpy_reference(dtype, tol):
    x = glyphs(24, dtype=dtype)
    aug = A.Augmenter(SETTINGS, seed=5, pixel_std=0.5, dtype=dtype, max_batch=8)  # grows to 24
    got = aug(x, epoch=1, step=2).copy()
    params, noise = aug.draw(24, 1, 2)
    assert params[:, A.P_GEO].any() and params[:, A.P_ER_H].any() and (params[:, A.P_NOISE_SLOT] >= 0).any()
    assert (params[:, A.P_FLIPX] < 0).any() and params[:, A.P_JITTER].any()
    want = reference(x, params, noise)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, np.abs(want).max()))


def test_identity_settings_return_x_bitwise():
    for dtype in (np.float32, np.float64):
        x = glyphs(10, dtype=dtype)
        for settings in (A.AugmentSettings(), A.AugmentSettings(affine_p=1.0)):  # p=1 with zero ranges too
            out = A.Augmenter(settings, seed=0, dtype=dtype)(x, 0, 0)
            assert out.dtype == dtype and np.array_equal(out, x) and out.tobytes() == x.tobytes()


@pytest.mark.parametrize("tx,ty", [(3, 0), (0, -2), (-5, 4)])
def test_integer_shift_moves_the_image_exactly(tx, ty):
    x = glyphs(3, seed=1)
    p = identity_params(3)
    p[:, A.P_GEO], p[:, A.P_TX], p[:, A.P_TY] = 1.0, tx, ty
    out = A.apply_params(x, p)
    for i in range(3):
        fill = reference_fill(x[i, 0])
        want = np.full((S, S), fill)
        want[max(ty, 0):S + min(ty, 0), max(tx, 0):S + min(tx, 0)] = \
            x[i, 0, max(-ty, 0):S + min(-ty, 0), max(-tx, 0):S + min(-tx, 0)]
        assert np.array_equal(out[i, 0], want)


def test_flip_and_zero_rotation():
    x = glyphs(2, seed=2)
    p = identity_params(2)
    p[:, A.P_GEO] = 1.0
    assert np.array_equal(A.apply_params(x, p), x)  # rotation 0, scale 1, no shift: identity
    p[0, A.P_FLIPX], p[1, A.P_FLIPY] = -1.0, -1.0
    out = A.apply_params(x, p)
    assert np.array_equal(out[0, 0], x[0, 0, :, ::-1]) and np.array_equal(out[1, 0], x[1, 0, ::-1, :])


def test_rotation_by_90_degrees_is_a_transpose_of_indices():
    x = glyphs(1, seed=3)
    p = identity_params(1)
    p[0, A.P_GEO], p[0, A.P_ROT] = 1.0, math.pi / 2
    out = A.apply_params(x, p)
    np.testing.assert_allclose(out[0, 0], np.rot90(x[0, 0], k=-1), atol=1e-12)  # y-down: clockwise


def test_erasing_fills_a_rectangle_with_the_background():
    x = glyphs(1, seed=4)
    p = identity_params(1)
    p[0, [A.P_ER_TOP, A.P_ER_LEFT, A.P_ER_H, A.P_ER_W]] = 5, 7, 9, 4
    out = A.apply_params(x, p)[0, 0]
    inside = np.zeros((S, S), bool)
    inside[5:14, 7:11] = True
    assert np.all(out[inside] == reference_fill(x[0, 0]))
    assert np.array_equal(out[~inside], x[0, 0][~inside])


def test_brightness_and_contrast_are_affine_in_the_values():
    x = glyphs(2, seed=5)
    p = identity_params(2)
    p[:, A.P_JITTER], p[:, A.P_CONTRAST], p[:, A.P_BRIGHT] = 1.0, [0.7, 1.4], [0.25, -0.1]
    out = A.apply_params(x, p)
    for i in range(2):
        m = x[i, 0].mean()
        np.testing.assert_allclose(out[i, 0], p[i, A.P_CONTRAST] * (x[i, 0] - m) + m + p[i, A.P_BRIGHT], atol=1e-12)


def test_draws_depend_on_seed_epoch_step_only_and_not_on_threads():
    x = glyphs(2 * A.BLOCK + 5, dtype=np.float32)     # blocks of A.BLOCK go to the worker threads; a short last one
    make = lambda seed=3: A.Augmenter(SETTINGS, seed=seed, pixel_std=0.4)  # noqa: E731
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = make()(x, 2, 7).copy()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        aug = make()
        aug(x, 0, 0)  # an earlier call leaves no state behind
        two = aug(x, 2, 7).copy()
    finally:
        numba.set_num_threads(before)
    assert one.tobytes() == two.tobytes()
    for other in (aug(x, 2, 8), aug(x, 3, 7), make(4)(x, 2, 7)):
        assert not np.array_equal(other, one)


def test_blocks_slices_and_the_explicit_draw_give_the_same_pixels():
    """Augmenter hands blocks of A.BLOCK images to the worker threads, each image drawing its own
    parameters from (key, its index); the result is one explicit-parameter kernel call over the batch
    with draw()'s parameters, and bind()'s transform over any split of the batch (as train_step's
    shards run it), bit for bit."""
    n = 2 * A.BLOCK + 5
    x = glyphs(n, dtype=np.float32)
    aug = A.Augmenter(SETTINGS, seed=1, pixel_std=0.4, max_batch=n)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        got = aug(x, 1, 4).copy()
    finally:
        numba.set_num_threads(before)
    p, noise = aug.draw(n, 1, 4)
    want = np.empty_like(x)
    A._k_augment(x, p, noise, want)
    assert got.tobytes() == want.tobytes()
    assert not np.array_equal(got, x)
    transform, pieces = aug.bind(1, 4), np.empty_like(x)
    for s in (slice(11, n), slice(0, 3), slice(3, 11)):
        transform(s, x[s], pieces[s])
    assert pieces.tobytes() == want.tobytes()
    in_place = x.copy()                     # out may be x_s itself (the trainer augments its lookup in place)
    transform(slice(0, n), in_place, in_place)
    assert in_place.tobytes() == want.tobytes()


def test_lookup_and_augmentation_in_one_call_equal_the_two_apart():
    """bind(lookup=(images, idx, table, fills)) makes each slice's input itself: the pixels of
    aug(lookup_batch(images, idx, table)), bit for bit, for any split of the batch, with and
    without the fills kept from one batch to the next (which the kernel then uses)."""
    from cnncli.kernels import lookup_batch

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (50, S, S), dtype=np.uint8)
    idx = rng.permutation(50)[:21].astype(np.int64)
    for dtype in (np.float32, np.float64):
        table = ((np.arange(256) / 255.0 - 0.4) / 0.3).astype(dtype)
        aug = A.Augmenter(SETTINGS, seed=2, pixel_std=0.3, dtype=dtype, max_batch=21)
        want = aug(lookup_batch(images, idx, table), 3, 5).copy()
        fills = np.full(len(images), np.nan)
        for kept in (None, fills, fills):          # no cache; a cache filled by the first pass, then used
            transform, got = aug.bind(3, 5, lookup=(images, idx, table, kept)), np.empty_like(want)
            for s in (slice(0, 8), slice(8, 16), slice(16, 21)):
                transform(s, None, got[s])
            assert got.tobytes() == want.tobytes()
        on = np.isin(np.arange(len(images)), idx)
        assert np.isnan(fills[~on]).all() and not np.isnan(fills[on]).all()     # only the batch's images
        fills[idx] = 1e9                            # a kept fill is what the next batches use
        transform, got = aug.bind(3, 5, lookup=(images, idx, table, fills)), np.empty_like(want)
        transform(slice(0, 21), None, got)
        assert (got == dtype(1e9)).any() and not (want == dtype(1e9)).any()


@pytest.mark.parametrize("kind", ["normal", "few values", "flat", "sorted runs"])
def test_border_median_is_numpy_median(kind):
    """The fill (the median of the 128 border samples) by the branch-free quickselect equals
    np.median, for distinct values, many duplicates, a flat border and long sorted runs."""
    rng = np.random.default_rng(len(kind))
    buf = np.empty(A.BORDER)
    for _ in range(200):
        if kind == "normal":
            img = rng.standard_normal((S, S))
        elif kind == "few values":
            img = rng.integers(0, 4, (S, S)).astype(np.float64)
        elif kind == "flat":
            img = np.full((S, S), rng.normal())
        else:
            img = np.sort(rng.integers(0, 30, (S, S)), axis=None)[::-1].reshape(S, S).astype(np.float64)
        for x in (img, img.astype(np.float32)):      # (the middle pair is averaged in float64)
            assert augment_pixels._border_median(x, buf) == reference_fill(x.astype(np.float64))


def test_drawn_uniforms_are_uniform_and_independent():
    """The counter-based draws (SplitMix64 of key and counter): the shifts of 4,096 images, mapped
    back to their uniforms, fill 16 equal bins evenly (each within 5 sigma), and are uncorrelated
    across the two axes, across neighbouring images and across neighbouring steps."""
    settings = A.AugmentSettings(affine_p=1.0, shift=1.0)
    n, bins = 4096, 16
    aug = A.Augmenter(settings, seed=11, max_batch=n)
    u = [(aug.draw(n, 0, step)[0][:, [A.P_TX, A.P_TY]] + 1.0) / 2.0 for step in (0, 1)]   # (n,2) each
    sigma = math.sqrt(n / bins)
    for col in (u[0][:, 0], u[0][:, 1], u[1][:, 0]):
        counts = np.histogram(col, bins=bins, range=(0.0, 1.0))[0]
        assert np.all(np.abs(counts - n / bins) < 5 * sigma), counts
    corr = lambda a, b: abs(np.corrcoef(a, b)[0, 1])  # noqa: E731
    limit = 5 / math.sqrt(n)
    assert corr(u[0][:, 0], u[0][:, 1]) < limit
    assert corr(u[0][:-1, 0], u[0][1:, 0]) < limit
    assert corr(u[0][:, 0], u[1][:, 0]) < limit


def test_drawn_parameters_stay_in_their_ranges():
    aug = A.Augmenter(SETTINGS, seed=0, pixel_std=0.5)
    p, _ = aug.draw(64, 0, 0)
    on = p[:, A.P_GEO] > 0
    assert np.all(np.abs(p[:, A.P_TX]) <= 3) and np.all(np.abs(p[:, A.P_ROT]) <= math.radians(25))
    assert np.all((p[on, A.P_SCALE] >= 0.8) & (p[on, A.P_SCALE] <= 1.2))
    assert np.all(np.abs(p[:, A.P_BRIGHT]) <= 0.2 / 0.5) and np.all(np.abs(p[:, A.P_CONTRAST] - 1) <= 0.3)
    h, w = p[:, A.P_ER_H], p[:, A.P_ER_W]
    assert np.all(p[:, A.P_ER_TOP] + h <= S) and np.all(p[:, A.P_ER_LEFT] + w <= S)
    erased = h > 0
    assert erased.any() and np.all(h[erased] * w[erased] <= 0.2 * S * S * 1.6)


def test_bad_batches_are_refused():
    aug = A.Augmenter(SETTINGS, seed=0)
    with pytest.raises(ValueError, match="x must be"):
        aug(np.zeros((2, 1, 28, 28), np.float32), 0, 0)
    with pytest.raises(ValueError, match="float32"):
        aug(np.zeros((2, 1, S, S)), 0, 0)
    with pytest.raises(ValueError, match="pixel_std"):
        A.Augmenter(SETTINGS, seed=0, pixel_std=0.0)


@pytest.mark.parametrize("field, value", [("affine_p", 2.0), ("shift", -1.0), ("rotate", 181), ("noise_std", True),
                                          ("scale", (1.2, 0.8)), ("scale", (0.0, 1.0)), ("erase_scale", (0.1,)),
                                          ("jitter_p", "0.5")])
def test_settings_made_in_python_are_checked_as_the_config_checks_them(field, value):
    with pytest.raises(ValueError, match=rf"^AugmentSettings\.{field} must be "):
        A.AugmentSettings(**{field: value})


def test_a_batch_of_another_dtype_says_which_the_augmenter_takes():
    aug = A.Augmenter(A.AugmentSettings(affine_p=1.0), seed=0)
    with pytest.raises(ValueError, match=r"x must be float32 \(this Augmenter's dtype; Augmenter\(\.\.\., "
                                         r"dtype=\.\.\.\)"):
        aug(np.zeros((2, 1, 32, 32)), 0, 0)
    with pytest.raises(ValueError, match=r"np\.ascontiguousarray"):
        aug(np.zeros((2, 1, 32, 64), np.float32)[..., ::2], 0, 0)


def test_a_bad_seed_is_named():
    # numpy's "expected non-negative integer" named no argument
    for bad in (-1, "7", 2.0):
        with pytest.raises(ValueError, match=f"seed must be an integer >= 0, got {bad!r}"):
            A.Augmenter(A.AugmentSettings(), seed=bad)
    assert A.Augmenter(A.AugmentSettings(), seed=np.int64(3)).seed == 3
