"""kernels/bnpool.py (training BN fused with pool + ELU, in vectors) against a NumPy composition of
tests/reference.py: BN over the shard as the batch, ELU, 2x2 max pool, and their gradients."""

import numpy as np
import pytest

import reference as R
from cnncli.kernels import bnpool

CASES = [(32, 2), (32, 0), (16, 0)]
EPS = 1e-5


def _shard(mode, W, C=3, N=5, seed=0):
    """z (N,C,W,W) float64 with a window of ties, per-statistic gamma (some negative: the max is
    taken of y, not of z) and beta, and a gradient for the pooled output."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, C, W, W)) * 2 + 0.5
    z[0, 0, :2, :2] = z[0, 0, 0, 0]
    D = C if mode == "channel" else C * W * W
    gamma, beta = rng.normal(size=D), rng.normal(size=D)
    dp = rng.normal(size=(N, C, W // 2, W // 2))
    return z, gamma, beta, dp


def _reference(z, gamma, beta, dp, mode):
    """(p, the batch's mean and invstd, sum dy, sum dy*xhat, dz) of the shard as the whole batch."""
    C = z.shape[1]
    axes = (0, 2, 3) if mode == "channel" else (0,)
    shape = (1, C, 1, 1) if mode == "channel" else (1,) + z.shape[1:]
    g4, b4 = gamma.reshape(shape), beta.reshape(shape)
    y = R.bn_forward(z, g4, b4, EPS, axes)[0]
    p, arg = R.maxpool_forward(R.elu(y))
    dy = R.maxpool_backward(dp, arg) * R.elu_grad(y)
    dz, dgamma, dbeta = R.bn_backward(dy, z, g4, EPS, axes)
    mean = z.mean(axis=axes).reshape(-1)
    invstd = 1.0 / np.sqrt(z.var(axis=axes).reshape(-1) + EPS)
    return p, mean, invstd, np.ravel(dbeta), np.ravel(dgamma), dz


def _pad(p, o):
    return np.pad(p, ((0, 0), (0, 0), (o, o), (o, o)))


@pytest.mark.parametrize("mode", ["channel", "unit"])
@pytest.mark.parametrize("W, o", CASES)
def test_fused_bn_pool_matches_numpy_in_float64(mode, W, o):
    z, gamma, beta, dp = _shard(mode, W)
    p_ref, mean, invstd, sdy_ref, sdyx_ref, dz_ref = _reference(z, gamma, beta, dp, mode)

    pp, arg = bnpool.bn_pool_elu_forward(z, mean, invstd, gamma, beta, o)
    np.testing.assert_allclose(pp, _pad(p_ref, o), rtol=1e-12, atol=1e-12)
    if mode == "channel":                   # one affine per map: ties in z stay ties in y
        assert arg[0, 0, 0, 0] == 0         # ... and the first one wins
    sums = bnpool.bn_unpool_sums(dp, pp, o, arg, z, mean, invstd)
    D = mean.shape[0]
    np.testing.assert_allclose(sums[:D], sdy_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sums[D:], sdyx_ref, rtol=1e-10, atol=1e-10)
    dz = bnpool.bn_unpool_backward(dp, pp, o, arg, z, mean, invstd, gamma, sums, z.size // D)
    np.testing.assert_allclose(dz, dz_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", ["channel", "unit"])
@pytest.mark.parametrize("W, o", CASES)
def test_fused_bn_pool_in_float32_is_close_to_float64(mode, W, o):
    z, gamma, beta, dp = _shard(mode, W, seed=1)
    z32, g32, b32, dp32 = (a.astype(np.float32) for a in (z, gamma, beta, dp))
    z, gamma, beta, dp = (a.astype(np.float64) for a in (z32, g32, b32, dp32))
    p_ref, mean, invstd, sdy_ref, sdyx_ref, dz_ref = _reference(z, gamma, beta, dp, mode)

    pp, arg = bnpool.bn_pool_elu_forward(z32, mean, invstd, g32, b32, o)
    np.testing.assert_allclose(pp, _pad(p_ref, o), rtol=2e-5, atol=2e-5)
    sums = bnpool.bn_unpool_sums(dp32, pp, o, arg, z32, mean, invstd)
    D = mean.shape[0]
    np.testing.assert_allclose(sums, np.concatenate([sdy_ref, sdyx_ref]), rtol=1e-4, atol=1e-4)
    dz = bnpool.bn_unpool_backward(dp32, pp, o, arg, z32, mean, invstd, g32, sums, z.size // D)
    assert dz.dtype == np.float32
    np.testing.assert_allclose(dz, dz_ref, rtol=1e-3, atol=1e-4)


def test_fused_bn_pool_refuses_other_shapes():
    z = np.zeros((2, 3, 8, 8))
    with pytest.raises(ValueError, match="32x32"):
        bnpool.bn_pool_elu_forward(z, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3))
    z = np.zeros((2, 3, 16, 16))
    with pytest.raises(ValueError, match="mean has shape"):
        bnpool.bn_pool_elu_forward(z, np.zeros(5), np.ones(5), np.ones(5), np.zeros(5))


_UNIT_TILES = {}


def _unit_tiles(tile):
    """A jitted call of bnunits' forward, sums and dz in one register tile ("wide" or "narrow"),
    made once per tile: its dispatcher compiles once per dtype for every case below."""
    if tile not in _UNIT_TILES:
        from numba import njit

        from cnncli.kernels import bnunits

        forward, unit_sums = getattr(bnunits, f"forward_units_{tile}"), getattr(bnunits, f"unit_sums_{tile}")
        backward = getattr(bnunits, f"backward_units_{tile}")

        @njit
        def run(dp, pp, o, arg, z, coef, out, dz, G, fcoef, fpp, farg):
            if z.shape[3] == 16:            # (W a constant in each call, as in bnpool)
                forward(z, fcoef, fpp, o, farg, 16, G)
                unit_sums(dp, pp, o, arg, z, coef, out, 16, G)
                backward(dp, pp, o, arg, z, coef, dz, 16, G)
            else:
                forward(z, fcoef, fpp, o, farg, 32, G)
                unit_sums(dp, pp, o, arg, z, coef, out, 32, G)
                backward(dp, pp, o, arg, z, coef, dz, 32, G)
        _UNIT_TILES[tile] = run
    return _UNIT_TILES[tile]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("W, o", CASES)
def test_wide_and_narrow_unit_tiles_give_the_same_bits(dtype, W, o):
    """bnunits' per-unit forward, sums and dz in AVX-512's (wide) and AVX2's (narrow) register
    tiles: the same bits on whichever machine, at every group size (N = 5: a short last group), and
    the same as the public kernels, which use one of them (simd.WIDE)."""
    from cnncli.kernels import bncoef, bnunits

    z, gamma, beta, dp = _shard("unit", W)
    _, mean, invstd, _, _, _ = _reference(z, gamma, beta, dp, "unit")
    z, dp, gamma = z.astype(dtype), dp.astype(dtype), gamma.astype(dtype)
    pp, arg = bnpool.bn_pool_elu_forward(z, mean, invstd, gamma, beta.astype(dtype), o)
    sums = bnpool.bn_unpool_sums(dp, pp, o, arg, z, mean, invstd)
    fcoef = bnpool._coef(z, mean, invstd, gamma, beta.astype(dtype))
    coef = bnpool._coef(z, mean, invstd, gamma, np.zeros_like(gamma))
    bncoef.bn_coef_backward_into(invstd, gamma, sums, float(z.shape[0]), coef)
    runs = {}
    for tile in ("wide", "narrow"):
        run = _unit_tiles(tile)
        for G in (1, 2, 4):
            out, dz = np.full_like(sums, np.nan), np.full_like(z, np.nan)
            fpp, farg = np.zeros_like(pp), np.full_like(arg, -1)
            run(dp, pp, o, arg, z, coef, out, dz, G, fcoef, fpp, farg)
            runs[(tile, G)] = out, dz, fpp, farg
    for G in (1, 2, 4):
        for a, b in zip(runs[("wide", G)], runs[("narrow", G)]):
            assert np.array_equal(a, b), G
        for k in (1, 2, 3):                 # dz and the forward do not depend on G
            assert np.array_equal(runs[("wide", G)][k], runs[("wide", 1)][k])
    assert np.array_equal(runs[("wide", bnunits.GROUP)][0], sums)
    dz = bnpool.bn_unpool_backward(dp, pp, o, arg, z, mean, invstd, gamma, sums, z.shape[0])
    assert np.array_equal(runs[("wide", 1)][1], dz)
    assert np.array_equal(runs[("wide", 1)][2], pp) and np.array_equal(runs[("wide", 1)][3], arg)
