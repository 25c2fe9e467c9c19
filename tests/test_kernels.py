"""Every Numba kernel against the slow NumPy reference (tests/reference.py), float64 and float32."""

import functools
from fractions import Fraction

import numpy as np
import pytest

from cnncli import blas
from cnncli.kernels import (activation, batchnorm, bnstats, bntree, conv, conv16, conv32, fc, fcgrad, lookup, pool,
                            threads)
from cnncli.kernels import loss as kloss

import reference as R

TOL = {np.float64: 1e-12, np.float32: 2e-5}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,C,F,H", [(3, 1, 6, 32), (2, 6, 16, 16), (1, 2, 3, 6)])
def test_conv2d_forward_backward(rng, dtype, N, C, F, H):
    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = rng.standard_normal((F, C, 5, 5)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    z = conv.conv2d_forward(x, w, b, 2)
    assert z.dtype == dtype and z.shape == (N, F, H, H)
    assert rel(z, R.conv2d_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 2)) < TOL[dtype]
    dz = rng.standard_normal(z.shape).astype(dtype)
    dx, dw, db = conv.conv2d_backward(dz, x, w, 2)
    rdx, rdw, rdb = R.conv2d_backward(dz.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 2)
    assert rel(dx, rdx) < TOL[dtype]
    assert rel(dw, rdw) < TOL[dtype]
    assert rel(db, rdb) < TOL[dtype]
    # the input layer skips dx
    dx2, dw2, db2 = conv.conv2d_backward(dz, x, w, 2, need_dx=False)
    assert dx2 is None and np.array_equal(dw2, dw) and np.array_equal(db2, db)


def test_conv2d_padded_equals_unpadded(rng):
    x = rng.standard_normal((2, 6, 16, 16))
    w = rng.standard_normal((16, 6, 5, 5))
    b = rng.standard_normal(16)
    assert np.array_equal(conv.conv2d_forward(x, w, b, 2), conv.conv2d_forward_padded(conv.pad2d(x, 2), w, b))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool_forward_backward(rng, dtype):
    a = rng.standard_normal((3, 6, 32, 32)).astype(dtype)
    out, arg = pool.maxpool2x2_forward(a)
    rout, rarg = R.maxpool_forward(a)
    assert np.array_equal(out, rout) and np.array_equal(arg, rarg) and arg.dtype == np.int8
    dout = rng.standard_normal(out.shape).astype(dtype)
    assert np.array_equal(pool.maxpool2x2_backward(dout, arg), R.maxpool_backward(dout, rarg).astype(dtype))


def test_maxpool_ties_go_to_first_maximum():
    a = np.zeros((1, 1, 4, 4))
    a[0, 0, :2, 2:] = [[1, 3], [3, 3]]      # window (0,1): max 3 at positions 1, 2, 3 -> first is 1
    a[0, 0, 2:, 2:] = [[2, 0], [0, 2]]      # window (1,1): positions 0 and 3 -> 0
    out, arg = pool.maxpool2x2_forward(a)
    assert arg.tolist() == [[[[0, 1], [0, 0]]]]       # all-zero windows -> 0 as well
    assert out.tolist() == [[[[0, 3], [0, 2]]]]
    da = pool.maxpool2x2_backward(np.ones_like(out), arg)
    assert da[0, 0].sum() == 4 and da[0, 0, 0, 3] == 1 and da[0, 0, 1, 2] == 0 and da[0, 0, 2, 2] == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_elu(rng, dtype):
    z = (3 * rng.standard_normal((4, 6, 8, 8))).astype(dtype)
    z[0, 0, 0, :3] = [0, -0.0, 1e-30]
    a = activation.elu_forward(z)
    assert rel(a, R.elu(z.astype(np.float64))) < TOL[dtype]
    da = rng.standard_normal(z.shape).astype(dtype)
    dz = activation.elu_backward(da, a)
    assert rel(dz, da * R.elu_grad(z.astype(np.float64))) < (1e-6 if dtype == np.float32 else 1e-12)
    # in place (out aliases the input) works too
    zc = z.copy()
    activation.elu_forward(zc, out=zc)
    assert np.array_equal(zc, a)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N", [2, 7])
def test_bn_unit(rng, dtype, N):
    z = (rng.standard_normal((N, 300)) * 2 + 1).astype(dtype)
    g = rng.uniform(0.5, 1.5, 300).astype(dtype)
    b = rng.standard_normal(300).astype(dtype)
    y, xhat, mean, var, invstd = batchnorm.bn_unit_forward(z, g, b, 1e-5)
    ry, rxhat, rmean, rvar = R.bn_forward(z.astype(np.float64), g, b, 1e-5, (0,))
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert rel(y, ry) < tol and rel(xhat, rxhat) < tol
    assert rel(mean, rmean[0]) < tol and rel(var, rvar[0]) < tol
    dy = rng.standard_normal(z.shape).astype(dtype)
    dz, dg, db = batchnorm.bn_unit_backward(dy, xhat, g, invstd)
    rdz, rdg, rdb = R.bn_backward(dy.astype(np.float64), z.astype(np.float64), g, 1e-5, (0,))
    tol = 1e-9 if dtype == np.float64 else 1e-3
    assert rel(dz, rdz) < tol and rel(dg, rdg) < tol and rel(db, rdb) < tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bn_channel(rng, dtype):
    z = (rng.standard_normal((5, 6, 16, 16)) * 3 - 2).astype(dtype)
    g = rng.uniform(0.5, 1.5, 6).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    z3 = z.reshape(5, 6, 256)
    y, xhat, mean, var, invstd = batchnorm.bn_channel_forward(z3, g, b, 1e-5)
    ry, rxhat, rmean, rvar = R.bn_forward(z.astype(np.float64), g.reshape(1, 6, 1, 1), b.reshape(1, 6, 1, 1),
                                          1e-5, (0, 2, 3))
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert rel(y, ry.reshape(5, 6, 256)) < tol
    assert rel(mean, rmean.ravel()) < tol and rel(var, rvar.ravel()) < tol
    dy = rng.standard_normal(z3.shape).astype(dtype)
    dz, dg, db = batchnorm.bn_channel_backward(dy, xhat, g, invstd)
    rdz, rdg, rdb = R.bn_backward(dy.reshape(z.shape).astype(np.float64), z.astype(np.float64),
                                  g.reshape(1, 6, 1, 1), 1e-5, (0, 2, 3))
    tol = 1e-9 if dtype == np.float64 else 1e-3
    assert rel(dz, rdz.reshape(5, 6, 256)) < tol and rel(dg, rdg) < tol and rel(db, rdb) < tol


@pytest.mark.parametrize("counts", [(8, 8, 8, 8, 8), (8, 8, 8, 3), (6, 6, 6), (1024, 2048, 512), (16,), (8,) * 16,
                                    (8,) * 16 + (5,), (4,) * 7 + (8,) * 6])
def test_bn_moments_tree_is_chans_formula_with_divisions_bitwise(rng, counts):
    """The moments' tree combines rows exactly as Chan's formula written with divisions, level by
    level (an odd last row carried): the kernel's stack order must give the same nodes, and for
    power-of-two counts it multiplies by 1/n instead, which must not change a bit; other counts
    divide. A shard's per-unit moments are their formula in the dtype (the sum in order, the mean
    sum / n, M2 about it), widened to float64."""
    S, D = len(counts), 101                      # 101 statistics: a 64-block, 16-blocks, a scalar tail
    rows = np.concatenate([rng.standard_normal((S, D)) * 50, rng.random((S, D)) * 900], axis=1)
    out = np.empty(2 * D)
    bntree.bn_moments_tree_into(rows, np.array(counts, np.float64), out)
    level, n = [r.copy() for r in rows], [float(c) for c in counts]
    while len(level) > 1:
        nxt, cnt = [], []
        for i in range(len(level) // 2):
            a, b, na, nb = level[2 * i], level[2 * i + 1], n[2 * i], n[2 * i + 1]
            delta = b[:D] / nb - a[:D] / na
            nxt.append(np.concatenate([a[:D] + b[:D], a[D:] + b[D:] + delta * delta * (na * nb / (na + nb))]))
            cnt.append(na + nb)
        if len(level) % 2:
            nxt.append(level[-1])
            cnt.append(n[-1])
        level, n = nxt, cnt
    assert out.tobytes() == level[0].tobytes()
    for dtype in (np.float32, np.float64):               # a shard's moments per unit, in the dtype
        for n in (8, 6):                                 # the mean as sum / n (x 1/8: exact)
            z = (rng.standard_normal((n, 40)) * 3 + 40).astype(dtype)      # 2 blocks of 16 and 8 alone
            got = np.empty(80)
            bnstats.bn_unit_moments_into(z, got)
            total = z[0].copy()
            for k in range(1, n):
                total = total + z[k]
            mean = total / dtype(n)
            m2 = np.zeros(40, dtype)
            for k in range(n):
                m2 = m2 + (z[k] - mean) * (z[k] - mean)
            assert got.tobytes() == np.concatenate([total, m2]).astype(np.float64).tobytes(), (dtype, n)


@pytest.mark.parametrize("M", [128.0, 100.0, 8192.0, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_stats_and_coefficients_are_their_formulas_bitwise(rng, M, dtype):
    """bn_stats_into (16-lane division and square root, 1/M for a power of two) and the fused
    kernels' coefficients (per unit in one loop, per channel repeated over the map) give the bits
    of the scalar formulas written in NumPy."""
    from cnncli.kernels import bncoef

    D = 6 * 16 + 7                                       # 16-lane blocks and a scalar tail
    moments = np.concatenate([rng.standard_normal(D) * 30, rng.random(D) * 500 * M])
    rm, rv = rng.standard_normal(D).astype(dtype), rng.random(D).astype(dtype)
    keep, m, unbias, eps = dtype(0.9), 0.1, 0.1 * M / (M - 1), 1e-5
    stats = np.empty((3, D))
    want_rm, want_rv = rm * keep + (moments[:D] / M) * m, rv * keep + (moments[D:] / M) * unbias
    bnstats.bn_stats_into(moments, M, eps, stats, keep, m, unbias, rm, rv)
    var = moments[D:] / M
    assert stats.tobytes() == np.stack([moments[:D] / M, var, 1.0 / np.sqrt(var + eps)]).tobytes()
    assert rm.tobytes() == want_rm.astype(dtype).tobytes() and rv.tobytes() == want_rv.astype(dtype).tobytes()
    gamma, beta = rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)
    sums = rng.standard_normal(2 * D) * 100
    f = gamma * stats[2] / M
    for rep in (1, 4):
        coef = np.empty((6, D * rep), dtype)
        bncoef.bn_coef_forward_into(stats[0], stats[2], gamma, beta, coef)
        bncoef.bn_coef_backward_into(stats[2], gamma, sums, M, coef)
        want = np.stack([stats[0], stats[2], gamma * stats[2], beta, -f * sums[:D], -f * sums[D:]]).astype(dtype)
        assert coef.tobytes() == np.repeat(want, rep, axis=1).tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bn_moments_per_shard_and_their_tree(rng, dtype):
    """Each shard's [sum | M2 about its own mean] (channel and unit kernels) against NumPy, and the
    tree of the shards' rows against the whole batch's sum and sum of squared deviations; the sum half
    is tree_sum's bits (so the batch mean is too). Shards of unequal size, an odd count (a carried row)."""
    from cnncli.distributed import tree_sum

    sizes = (8, 8, 8, 3, 8)
    z = (rng.standard_normal((sum(sizes), 6, 64)) * 3 + 40).astype(dtype)    # a large mean: cancellation
    edges = np.cumsum((0,) + sizes)
    for kernel, view, per in ((bnstats.bn_channel_moments_into, lambda a: a, 64),
                              (bnstats.bn_unit_moments_into, lambda a: a.reshape(len(a), -1), 1)):
        rows, counts = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            zs = view(z[lo:hi])
            out = np.full(2 * (6 if per > 1 else 6 * 64), np.nan)
            kernel(zs, out)
            assert bnstats.bn_moments(zs).tobytes() == out.tobytes()        # the checked wrapper
            z64 = zs.astype(np.float64)
            axes = (0, 2) if per > 1 else (0,)
            want_m2 = ((z64 - z64.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)
            tight = per > 1 or dtype == np.float64           # per unit a shard adds in the dtype
            np.testing.assert_allclose(out[: len(out) // 2], z64.sum(axis=axes), rtol=1e-13 if tight else 1e-6)
            np.testing.assert_allclose(out[len(out) // 2:], want_m2, rtol=1e-10 if tight else 1e-5)
            rows.append(out)
            counts.append((hi - lo) * per)
        parts = np.array(rows)
        total = np.empty(parts.shape[1])
        bntree.bn_moments_tree_into(parts, np.array(counts, np.float64), total)
        assert bntree.bn_moments_tree(parts, np.array(counts, np.float64)).tobytes() == total.tobytes()
        d = parts.shape[1] // 2
        z64 = view(z).astype(np.float64)
        axes = (0, 2) if per > 1 else (0,)
        assert total[:d].tobytes() == tree_sum(parts[:, :d]).tobytes()
        want = ((z64 - z64.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)
        np.testing.assert_allclose(total[d:], want, rtol=1e-10 if per > 1 or dtype == np.float64 else 1e-5)


def test_bn_inference_matches_formula(rng):
    z = rng.standard_normal((4, 6, 10))
    g, b, m, v = rng.standard_normal(6), rng.standard_normal(6), rng.standard_normal(6), rng.uniform(0.1, 2, 6)
    y = batchnorm.bn_inference(z, g, b, m, v, 1e-5)
    ref = (z - m[None, :, None]) / np.sqrt(v[None, :, None] + 1e-5) * g[None, :, None] + b[None, :, None]
    assert rel(y, ref) < 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fc(rng, dtype):
    x = rng.standard_normal((5, 1024)).astype(dtype)
    w = rng.standard_normal((65, 1024)).astype(dtype)
    b = rng.standard_normal(65).astype(dtype)
    z = fc.fc_forward(x, w, b)
    assert rel(z, x.astype(np.float64) @ w.T.astype(np.float64) + b) < TOL[dtype] * 10
    dz = rng.standard_normal(z.shape).astype(dtype)
    dx, dw, db = fc.fc_backward(dz, x, w)
    assert rel(dx, dz.astype(np.float64) @ w) < TOL[dtype] * 10
    assert rel(dw, dz.T.astype(np.float64) @ x) < TOL[dtype] * 10
    assert rel(db, dz.sum(0)) < TOL[dtype] * 10


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, o, i", [(8, 65, 1024), (3, 12, 65), (1, 5, 70), (0, 4, 64)])
def test_fc_grads_sum_images_in_order(rng, dtype, n, o, i):
    """fc_grads_into's fixed rule, bit for bit: per element the rounded product dz[0,o]*x[0,i], then
    dz[k,o]*x[k,i] added by one fused multiply-add for k = 1, 2, ... in order (vector columns and
    the scalar tail alike); db the plain sums in order. The fused multiply-add of the reference is
    exact arithmetic (fractions) rounded once."""
    dz = (rng.standard_normal((n, o)) * 10.0 ** rng.integers(-3, 4, (n, o))).astype(dtype)
    x = rng.standard_normal((n, i)).astype(dtype)
    dw, db = np.full((o, i), np.nan, dtype), np.full(o, np.nan, dtype)
    fcgrad.fc_grads_into(dz, x, dw, db)
    rdb = np.zeros(o, dtype)
    for k in range(n):
        rdb = dz[k].copy() if k == 0 else rdb + dz[k]
    assert db.tobytes() == rdb.tobytes()
    if n == 0:
        assert not dw.any()
        return
    cols = sorted(set(range(min(i, 20))) | set(range(max(0, i - 20), i)))        # both ends: vectors and tail
    for oo in sorted({0, o // 2, o - 1}):
        for ii in cols:
            t = dtype(dz[0, oo] * x[0, ii])
            for k in range(1, n):
                exact = Fraction(float(dz[k, oo])) * Fraction(float(x[k, ii])) + Fraction(float(t))
                t = _round_once(exact, dtype)
            assert dw[oo, ii].tobytes() == t.tobytes(), (oo, ii)


def _round_once(exact, dtype):
    """The fraction `exact` rounded to the nearest value of dtype, ties to even (one rounding: a
    float32 via float64 could round twice)."""
    guess = dtype(float(exact))
    near = [guess, np.nextafter(guess, dtype(np.inf)), np.nextafter(guess, dtype(-np.inf))]
    err = [abs(Fraction(float(c)) - exact) for c in near]
    best = min(err)
    ties = [c for c, e in zip(near, err) if e == best]
    return min(ties, key=lambda c: int(c.view(np.uint32 if dtype == np.float32 else np.uint64)) & 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_bce(rng, dtype):
    z = (rng.standard_normal((6, 12)) * 4).astype(dtype)
    labels = rng.integers(0, 12, 6)
    loss, p, dz = kloss.sigmoid_bce_forward_backward(z, labels)
    rloss, rp, rdz = R.sigmoid_bce(z.astype(np.float64), labels)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert abs(loss - rloss) / rloss < tol and rel(p, rp) < tol and rel(dz, rdz) < tol
    assert np.array_equal(activation.sigmoid(z), p)


def test_sigmoid_bce_is_stable_for_huge_logits():
    z = np.array([[800.0, -800.0, 0.0]])
    loss, p, dz = kloss.sigmoid_bce_forward_backward(z, np.array([1]))
    # label 1 has logit -800: its BCE term is 800; the class with logit 800 and target 0 adds 800
    assert np.isfinite(loss) and abs(loss - (1600 + np.log(2))) < 1e-9
    assert np.all(np.isfinite(p)) and p[0, 0] == 1 and p[0, 1] == 0


def test_wrappers_raise_value_errors_naming_argument_and_shape(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"w has shape \(4, 2, 5, 5\)"):
        conv.conv2d_forward(x, np.zeros((4, 2, 5, 5)), np.zeros(4), 2)
    with pytest.raises(ValueError, match=r"b has shape \(3,\), expected \(4,\)$"):
        conv.conv2d_forward(x, np.zeros((4, 3, 5, 5)), np.zeros(3), 2)
    with pytest.raises(ValueError, match=r"w has dtype float32"):
        conv.conv2d_forward(x, np.zeros((4, 3, 5, 5), np.float32), np.zeros(4), 2)
    with pytest.raises(ValueError, match=r"a has shape \(2, 3, 7, 8\)"):
        pool.maxpool2x2_forward(rng.standard_normal((2, 3, 7, 8)))
    with pytest.raises(ValueError, match=r"labels .*outside \[0, 12\)"):
        kloss.sigmoid_bce_forward_backward(np.zeros((2, 12)), np.array([0, 12]))
    with pytest.raises(ValueError, match=r"labels has dtype float64"):
        kloss.sigmoid_bce_forward_backward(np.zeros((2, 12)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"z has dtype int64"):
        activation.elu_forward(np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"gamma has shape \(5,\)"):
        batchnorm.bn_unit_forward(np.zeros((2, 4)), np.ones(5), np.zeros(4))


def test_conv_backward_is_bitwise_reproducible(rng):
    x = rng.standard_normal((9, 6, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    dz = rng.standard_normal((9, 16, 16, 16)).astype(np.float32)
    first = conv.conv2d_backward(dz, x, w, 2)
    for _ in range(3):
        again = conv.conv2d_backward(dz, x, w, 2)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))


# ---- fast-path kernels used by model.Network ------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,F", [(1, 16), (3, 16), (2, 4)])
def test_conv16_kernels_match_reference(rng, dtype, N, F):
    # conv2's 16-lane direct kernels (forward, input and weight gradients) against the plain
    # NumPy convolution; F = 4 covers a single tile of maps in the forward kernel
    x = rng.standard_normal((N, 6, 16, 16)).astype(dtype)
    w = rng.standard_normal((F, 6, 5, 5)).astype(dtype)
    xp = conv.pad2d(x, 2)
    z = conv16.conv16_forward(xp, w)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert z.dtype == dtype and rel(z, R.conv2d_forward(x64, w64, np.zeros(F), 2)) < TOL[dtype]
    if F == 16:                      # the backward kernels are written for conv2's 16 maps
        dz = rng.standard_normal(z.shape).astype(dtype)
        dx, dw = conv16.conv16_backward(dz, xp, w)
        rdx, rdw, _ = R.conv2d_backward(dz.astype(np.float64), x64, w64, 2)
        assert dx.dtype == dw.dtype == dtype
        assert rel(dx, rdx) < TOL[dtype] and rel(dw, rdw) < TOL[dtype]
    # every lane and every tile position matters: one changed input value moves the outputs
    # it touches and no other
    xp2 = xp.copy()
    xp2[N - 1, 5, 2 + 15, 2 + 0] += 1
    moved = conv16.conv16_forward(xp2, w) != z
    assert moved[N - 1, :, 13:, :3].all() and moved.sum() == F * 3 * 3


def test_conv16_checks_shapes():
    xp = np.zeros((2, 6, 20, 20), np.float32)
    with pytest.raises(ValueError, match="w"):
        conv16.conv16_forward(xp, np.zeros((6, 6, 5, 5), np.float32))        # 6 maps: not a multiple of 4
    with pytest.raises(ValueError, match="xp"):
        conv16.conv16_forward(np.zeros((2, 6, 18, 18), np.float32), np.zeros((16, 6, 5, 5), np.float32))
    with pytest.raises(ValueError, match="w"):
        conv16.conv16_forward(xp, np.zeros((16, 6, 5, 5), np.float64))       # dtype mismatch
    with pytest.raises(ValueError, match="dz"):
        conv16.conv16_backward(np.zeros((2, 16, 16, 15), np.float32), xp, np.zeros((16, 6, 5, 5), np.float32))
    with pytest.raises(ValueError, match="16 filters"):
        conv16.conv16_backward(np.zeros((2, 8, 16, 16), np.float32), xp, np.zeros((8, 6, 5, 5), np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H", [16, 32, 6])       # conv2's and conv1's vector paths, the scalar one
def test_fused_pool_elu_equals_pool_of_elu(rng, dtype, H):
    z = (2 * rng.standard_normal((3, 6, H, H))).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    p, arg = pool.pool_elu_forward(z, b)
    rp, rarg = R.maxpool_forward(R.elu(z.astype(np.float64) + b.reshape(1, 6, 1, 1)))
    assert rel(p, rp) < TOL[dtype] and np.array_equal(arg, rarg)
    dp = rng.standard_normal(p.shape).astype(dtype)
    dz = pool.pool_elu_backward(dp, p, arg)
    rdz = R.maxpool_backward(dp.astype(np.float64), rarg) * R.elu_grad(z.astype(np.float64) + b.reshape(1, 6, 1, 1))
    assert rel(dz, rdz) < (1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H,o", [(32, 2), (32, 0), (16, 0)])
def test_vector_pooling_equals_the_scalar_loops_bitwise(rng, dtype, H, o):
    # the 16-lane pooling (the network's shapes) against the scalar loops it replaces, through
    # ties (rounded values), NaN and the padded output buffer: the same values and positions
    from numba import njit

    @njit
    def scalar(z, b, pp, o, arg, dp, dz):
        N, C, Ho, Wo = arg.shape
        for n in range(N):
            for c in range(C):
                pool._pool_plane(z, b[c], pp, o, arg, n, c, Ho, Wo)
        for n in range(N):
            for c in range(C):
                pool._unpool_plane(dp, pp, o, arg, dz, n, c, Ho, Wo)

    N, C, Ho = 4, 3, H // 2
    z = (2 * rng.standard_normal((N, C, H, H))).astype(dtype)
    z[1] = np.round(z[1])                     # many ties, some at 0
    z[2, 0, 0, 1] = z[2, 1, 5, 4] = np.nan
    z[3] = -30                                # ELU saturates: p = -1, its derivative 0
    b = rng.standard_normal(C).astype(dtype)
    dp = rng.standard_normal((N, C, Ho, Ho)).astype(dtype)
    outs = []
    for fast in (True, False):
        pp = np.zeros((N, C, Ho + 2 * o, Ho + 2 * o), dtype)
        arg = np.full((N, C, Ho, Ho), -1, np.int8)
        dz = np.full((N, C, H, H), 7, dtype)
        if fast:
            pool.pool_elu_forward_into(z, b, pp, o, arg)
            pool.pool_elu_backward_into(dp, pp, o, arg, dz)
        else:
            scalar(z, b, pp, o, arg, dp, dz)
        outs.append((pp, arg, dz))
    for a, c in zip(*outs):
        assert np.array_equal(a, c, equal_nan=True)
    assert (outs[0][1] >= 0).all() and not (outs[0][2] == 7).any()


def test_blas_single_thread_restores_the_thread_count():
    api = blas.threads_api()
    if api is None:
        pytest.skip("OpenBLAS thread API not reachable")
    old = api[0]()
    with threads.blas_single_thread():
        assert api[0]() == 1
    assert api[0]() == old


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,C,F", [(3, 1, 6), (1, 1, 3), (2, 2, 6)])
def test_conv32_kernels_match_reference(rng, dtype, N, C, F):
    # conv1's 16-lane kernels: the forward (6 maps, any C) and the weight/bias gradient (C = 1)
    x = rng.standard_normal((N, C, 32, 32)).astype(dtype)
    xp = conv.pad2d(x, 2)
    x64 = x.astype(np.float64)
    if F == 6:
        w = rng.standard_normal((6, C, 5, 5)).astype(dtype)
        z = conv32.conv32_forward(xp, w)
        assert z.dtype == dtype and rel(z, R.conv2d_forward(x64, w.astype(np.float64), np.zeros(6), 2)) < TOL[dtype]
    if C == 1:
        w = rng.standard_normal((F, 1, 5, 5)).astype(dtype)
        dz = rng.standard_normal((N, F, 32, 32)).astype(dtype)
        dw, db = conv32.conv32_backward_dw(dz, xp)
        _, rdw, rdb = R.conv2d_backward(dz.astype(np.float64), x64, w.astype(np.float64), 2)
        assert dw.dtype == db.dtype == dtype
        assert rel(dw, rdw) < TOL[dtype] and rel(db, rdb) < TOL[dtype]
    with pytest.raises(ValueError, match="w"):
        conv32.conv32_forward(xp, np.zeros((4, C, 5, 5), dtype))               # the kernel computes 6 maps
    with pytest.raises(ValueError, match="xp"):
        conv32.conv32_backward_dw(np.zeros((N, F, 32, 32), dtype), conv.pad2d(np.zeros((N, 2, 32, 32), dtype), 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32, np.uint16])
def test_lookup_batch_equals_fancy_indexing(rng, dtype, idx_dtype):
    images = rng.integers(0, 256, (50, 32, 32), dtype=np.uint8)
    table = ((np.arange(256) / 255.0 - 0.4) / 0.3).astype(dtype)
    idx = rng.permutation(50)[:17].astype(idx_dtype)
    x = lookup.lookup_batch(images, idx, table)
    assert x.dtype == dtype and x.shape == (17, 1, 32, 32)
    assert np.array_equal(x, table[images[idx]][:, None])


def test_lookup_batch_rejects_bad_indices(rng):
    images = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    table = np.zeros(256, np.float32)
    with pytest.raises(ValueError, match="outside 0..4"):
        lookup.lookup_batch(images, np.array([0, 5]), table)
    with pytest.raises(ValueError, match="integer"):
        lookup.lookup_batch(images, np.array([0.0]), table)
    with pytest.raises(ValueError, match="images has dtype float32"):
        lookup.lookup_batch(images.astype(np.float32), np.array([0]), table)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_elu_exp_matches_libm_expm1(rng, dtype):
    """ELU's negative side is activation._expm1_neg (vectorizable arithmetic), not libm's expm1: over
    the whole negative range it must stay within 2 ulp (float64) / 1 ulp (float32) of libm's expm1 and
    within 1.5 ulp of the exact value (np.expm1 in long double, or float64 for float32 inputs; where
    long double is only double, that reference is itself off by up to ~1 ulp, so 2.5 there), and
    keep -0, -inf, NaN and the underflow to -1 right. The float32 libm reference is float64 expm1
    rounded to float32: numpy's own float32 expm1 takes a SIMD approximation on AVX-512 machines
    that is itself up to 2 ulp off (seen on this project's Intel machines, where ours was 0.5 ulp)."""
    z = np.concatenate([-np.logspace(-300 if dtype == np.float64 else -38, 3, 50001),
                        -rng.uniform(0, 60, 50000), rng.uniform(0, 5, 1000)]).astype(dtype)
    a = activation.elu_forward(z)
    spacing = np.spacing(np.abs(np.expm1(np.minimum(z, 0))).clip(np.finfo(dtype).tiny)).astype(np.longdouble)
    libm = np.where(z >= 0, z, np.expm1(np.minimum(z, 0).astype(np.float64)).astype(dtype))
    assert (np.abs(a.astype(np.longdouble) - libm) / spacing).max() <= (2 if dtype == np.float64 else 1)
    wide = np.longdouble if dtype == np.float64 else np.float64
    exact = np.where(z >= 0, z.astype(wide), np.expm1(np.minimum(z, 0).astype(wide)))
    bound = 1.5 if (dtype == np.float32 or np.finfo(np.longdouble).nmant > 52) else 2.5
    assert (np.abs(a.astype(np.longdouble) - exact.astype(np.longdouble)) / spacing).max() <= bound
    assert np.array_equal(a[z >= 0], z[z >= 0])
    special = activation.elu_forward(np.array([-0.0, -np.inf, np.nan, -1e4, -41.0, -np.finfo(dtype).tiny], dtype))
    assert special[0] == 0 and special[1] == -1 and np.isnan(special[2])
    assert special[3] == -1 and special[4] == -1 and special[5] == -np.finfo(dtype).tiny


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vector_elu_equals_the_scalar_elu_bitwise(rng, dtype):
    """activation.velu (16 lanes, fused into the pooling stores) gives every value the bits of the
    scalar elu, over the whole range and the special values."""
    from numba import njit

    from cnncli.kernels.simd import vload, vstore

    @njit
    def vector(z, out):
        for i in range(0, z.shape[0], 16):
            vstore(out, i, activation.velu(vload(z, i)))

    @njit
    def scalar(z, out):
        for i in range(z.shape[0]):
            out[i] = activation.elu(z[i])

    z = np.concatenate([-np.logspace(-300 if dtype == np.float64 else -38, 3, 50000),
                        rng.standard_normal(50000) * 20, np.logspace(-30, 30, 1000),
                        [-0.0, 0.0, -np.inf, np.inf, np.nan, -18, -40, -41, np.finfo(dtype).min]]).astype(dtype)
    z = np.concatenate([z, np.zeros(-len(z) % 16, dtype)])
    fast, slow = np.empty_like(z), np.empty_like(z)
    vector(z, fast)
    scalar(z, slow)
    assert fast.tobytes() == slow.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv16_grads_finish_transposes_and_sums_in_order(rng, dtype):
    """dw = dwt with the map index first; db per map = the positions of dzt summed in order, bitwise;
    pad2_into writes the interior and leaves the border."""
    dwt = rng.standard_normal((6, 5, 5, 16)).astype(dtype)
    dzt = (rng.standard_normal((3, 256, 16)) * 10.0 ** rng.integers(-3, 4, (3, 256, 16))).astype(dtype)
    dw, db = np.empty((16, 6, 5, 5), dtype), np.empty(16, dtype)
    conv16.conv16_grads_finish_into(dwt, dzt, dw, db)
    assert np.array_equal(dw, dwt.transpose(3, 0, 1, 2))
    ref = np.zeros(16, dtype)
    for row in dzt.reshape(-1, 16):
        ref = ref + row
    assert db.tobytes() == ref.tobytes()
    x = rng.standard_normal((2, 1, 32, 32)).astype(dtype)
    xp = np.full((2, 1, 36, 36), 7.0, dtype)
    conv32.pad2_into(x, xp)
    assert np.array_equal(xp[:, :, 2:34, 2:34], x) and (xp[:, :, :2] == 7).all() and (xp[:, :, :, 34:] == 7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_tally_counts_argmax_hits_and_flags_non_finite_gradients(rng, dtype):
    from cnncli.kernels.tally import tally

    probs = rng.integers(0, 4, (37, 12)).astype(dtype)          # small integers: many ties
    labels = rng.integers(0, 12, 37)
    grads = rng.standard_normal(1003).astype(dtype)
    assert tally(grads, probs, labels) == int((probs.argmax(1) == labels).sum())
    big = np.full(1003, np.finfo(dtype).max, dtype)             # finite, though their sum overflows
    assert tally(big, probs, labels) == int((probs.argmax(1) == labels).sum())
    for bad in (np.nan, np.inf, -np.inf):
        for at in (0, 500, 1002):
            g = grads.copy()
            g[at] = bad
            assert tally(g, probs, labels) == -1
    with pytest.raises(ValueError, match="labels"):
        tally(grads, probs, labels[:-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_carve64_starts_on_a_cache_line_wherever_the_buffer_starts(dtype):
    from numba import njit

    from cnncli.kernels.aligned import ALIGN, carve64

    @njit
    def carve(buf, at, size):
        v = carve64(buf, at, size)
        return v.ctypes.data, v[0], v.size

    raw = np.arange(400, dtype=dtype)
    step = ALIGN // raw.itemsize
    seen = set()
    for start in range(2 * step):                     # every alignment of the buffer's first element
        buf = raw[start:start + 3 * step + 40]
        seen.add(buf.ctypes.data % ALIGN)
        for at in (0, step, 2 * step):
            addr, first, size = carve(buf, at, 40)
            assert addr % ALIGN == 0 and size == 40
            k = int(first) - start                    # the element of buf it starts at
            assert k - at < step and (k - at) * raw.itemsize == -buf.ctypes.data % ALIGN
    assert len(seen) == step                          # (the buffers did start at every boundary)


@functools.lru_cache(maxsize=None)
def _njit_runner(kind, tile):
    # an njit call of one register tile: per image (conv16/conv32 forward, conv16 input gradient)
    # or over the batch (the weight gradients; "batch3": three arguments); made once per tile, so
    # its dispatcher compiles once per signature for all the cases
    from numba import njit

    if kind == "image":
        @njit
        def run(xp, w, z):
            for n in range(xp.shape[0]):
                tile(xp, n * xp[0].size, w, z, n * z[0].size)
    elif kind == "dx":
        @njit
        def run(dzp, w, dx):
            for n in range(dzp.shape[0]):
                tile(dzp, n, w, dx)
    elif kind == "batch3":
        @njit
        def run(a, b, c):
            tile(a, b, c)
    else:
        @njit
        def run(a, b, c, d):
            tile(a, b, c, d)
    return run


@functools.lru_cache(maxsize=None)
def _grads_runner(tile):
    # an njit call of one of fcgrad's weight-gradient tiles over every output pair and 64 columns
    from numba import njit

    from cnncli.kernels.simd import vstore

    @njit
    def grads(dz, x, out):
        for o in range(0, dz.shape[1], 2):
            p = min(o + 1, dz.shape[1] - 1)
            for i in range(0, x.shape[1], 64):
                a0, a1, a2, a3, b0, b1, b2, b3 = tile(dz, x, o, p, 0, dz.shape[0], i)
                r, q = o * x.shape[1] + i, p * x.shape[1] + i
                vstore(out, r, a0), vstore(out, r + 16, a1), vstore(out, r + 32, a2), vstore(out, r + 48, a3)
                vstore(out, q, b0), vstore(out, q + 16, b1), vstore(out, q + 32, b2), vstore(out, q + 48, b3)
    return grads


def _same_bits_both_ways(module, name, kind, args, outs):
    """Run module.name_wide and module.name_narrow on args into fresh zeroed arrays shaped like
    `outs`; assert they give the same bits; return the wide tile's arrays."""
    got = []
    for variant in ("wide", "narrow"):
        fresh = [np.zeros_like(o) for o in outs]
        _njit_runner(kind, getattr(module, f"{name}_{variant}"))(*args, *fresh)
        got.append(fresh)
    assert all(np.array_equal(a, b) for a, b in zip(*got)), (name, kind)
    return got[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_wide_and_narrow_conv_tiles_give_the_same_bits(rng, dtype):
    """The AVX-512 (wide) and AVX2 (narrow) register tiles of every convolution kernel sum each
    output in the same order: the same bits, on whichever machine; the network's kernels use one
    of them (simd.WIDE), and both equal the public kernels' bits here."""
    N = 3
    # conv2 forward, input gradient (per image), weight gradient (C = 5: the wide tile's clamped pair)
    xp = conv.pad2d(rng.standard_normal((N, 6, 16, 16)).astype(dtype), 2)
    w = rng.standard_normal((16, 6, 5, 5)).astype(dtype)
    z, = _same_bits_both_ways(conv16, "conv16_image", "image", (xp, w), [np.zeros((N, 16, 16, 16), dtype)])
    assert np.array_equal(z, conv16.conv16_forward(xp, w))
    dz = rng.standard_normal((N, 16, 16, 16)).astype(dtype)
    dx, = _same_bits_both_ways(conv16, "dx_image", "dx", (conv.pad2d(dz, 2), w), [np.zeros((N, 6, 16, 16), dtype)])
    assert np.array_equal(dx, conv16.conv16_backward(dz, xp, w)[0])
    xp5, w5 = np.ascontiguousarray(xp[:, :5]), np.ascontiguousarray(w[:, :5])
    dzt = np.ascontiguousarray(dz.transpose(0, 2, 3, 1).reshape(N, 256, 16))       # (N,256,16) maps last
    dwt, = _same_bits_both_ways(conv16, "dw_maps", "batch", (dz, xp5, dzt), [np.zeros((5, 5, 5, 16), dtype)])
    assert np.array_equal(dwt.transpose(3, 0, 1, 2), conv16.conv16_backward(dz, xp5, w5, need_dx=False)[1])
    # conv1 forward (6 maps, C = 1 and 2) and weight/bias gradient (F = 6 and F = 4: a clamped triple)
    for C in (1, 2):
        xp1 = conv.pad2d(rng.standard_normal((N, C, 32, 32)).astype(dtype), 2)
        w1 = rng.standard_normal((6, C, 5, 5)).astype(dtype)
        z, = _same_bits_both_ways(conv32, "conv32_image", "image", (xp1, w1), [np.zeros((N, 6, 32, 32), dtype)])
        assert np.array_equal(z, conv32.conv32_forward(xp1, w1))
    xp1 = conv.pad2d(rng.standard_normal((N, 1, 32, 32)).astype(dtype), 2)
    for F in (6, 4):
        dz1 = rng.standard_normal((N, F, 32, 32)).astype(dtype)
        dw, db = _same_bits_both_ways(conv32, "dw_maps", "batch", (dz1, xp1),
                                      [np.zeros((F, 1, 5, 5), dtype), np.zeros(F, dtype)])
        want = conv32.conv32_backward_dw(dz1, xp1)
        assert np.array_equal(dw, want[0]) and np.array_equal(db, want[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,O,I", [(7, 65, 1024), (4, 12, 1000), (1, 3, 48)])
def test_wide_and_narrow_fc_tiles_give_the_same_bits(rng, dtype, N, O, I):
    """fc's forward, input-gradient and weight-gradient tiles, AVX-512's and AVX2's: the same bits
    (odd N and O: the clamped and leftover rows; I % 64: the leftover columns), equal to the
    public kernels'."""
    x = rng.standard_normal((N, I)).astype(dtype)
    w = rng.standard_normal((O, I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    dz = rng.standard_normal((N, O)).astype(dtype)
    z, = _same_bits_both_ways(fc, "forward_tiles", "batch", (x, w, b), [np.zeros((N, O), dtype)])
    want = np.zeros((N, O), dtype)
    fc.fc_forward_loop_into(x, w, b, want)
    assert np.array_equal(z, want)
    got = []
    for tiles in (fc.dx_tiles_wide, fc.dx_tiles_narrow):
        dx = np.zeros((N, I), dtype)
        _njit_runner("batch3", tiles)(dz, w, dx)
        got.append(dx)
    want = np.zeros((N, I), dtype)
    fc.fc_dx_loop_into(dz, w, want)
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], want)
    if I % 64 == 0:
        got = []
        for tile in (fcgrad._grad_tile_wide, fcgrad._grad_tile_narrow):
            out = np.zeros((O, I), dtype)
            _grads_runner(tile)(dz, x, out)
            got.append(out)
        dw, db = np.zeros((O, I), dtype), np.zeros(O, dtype)
        fcgrad.fc_grads_into(dz, x, dw, db)
        assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], dw)
