"""kernels/segments.py: each BN-step segment (one numba call) leaves every array it writes with the
bits of its layer kernels called one by one from Python, float32 and float64, per unit and per
channel coefficients alike (the coefficients are only data to it)."""

import numpy as np
import pytest

from cnncli import passes
from cnncli.kernels import bnpool, bnstats, conv16, conv32, segments


def _filled(ws, rng, dtype):
    for name, arr in vars(ws).items():
        if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and name not in ("xp1", "xp2", "dzp2"):
            arr[...] = rng.standard_normal(arr.shape)
    ws.arg1[...] = rng.integers(0, 4, ws.arg1.shape)
    ws.arg2[...] = rng.integers(0, 4, ws.arg2.shape)
    ws.xp2[:, :, 2:18, 2:18] = rng.standard_normal((ws.n, 6, 16, 16))   # the border stays 0
    return ws


def _pair(dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = _filled(passes.Workspace(5, 12, "unit", dtype), rng, dtype)
    b = passes.Workspace(5, 12, "unit", dtype)
    for name, arr in vars(a).items():
        if isinstance(arr, np.ndarray) and arr.base is None:
            getattr(b, name)[...] = arr
    return a, b, rng


def _same(a, b):
    for name, arr in vars(a).items():
        if isinstance(arr, np.ndarray):
            assert arr.tobytes() == getattr(b, name).tobytes(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segments_equal_their_kernels_one_by_one(dtype):
    a, b, rng = _pair(dtype)
    rnd = lambda *s: rng.standard_normal(s).astype(dtype)            # noqa: E731
    x, w1, b1, w2, b2 = rnd(5, 1, 32, 32), rnd(6, 1, 5, 5), rnd(6), rnd(16, 6, 5, 5), rnd(16)
    coef1, coef2 = rnd(6, 6 * 1024), rnd(6, 16 * 256)
    coef1[1] = np.abs(coef1[1]) + 0.5                                # rows 1: inverse std > 0
    coef2[1] = np.abs(coef2[1]) + 0.5
    rows = [np.zeros(2 * 6144), np.zeros(2 * 6144)]

    segments.conv1_moments_into(x, a.xp1, w1, a.z1, b1, rows[0])
    conv32.pad2_into(x, b.xp1)
    conv32.conv32_forward_into(b.xp1, w1, b.z1)
    bnstats.bn_bias_moments_into(b.z1.reshape(5, 6, 1024), b1, rows[1])
    _same(a, b)
    assert rows[0].tobytes() == rows[1].tobytes()

    rows = [np.zeros(2 * 4096), np.zeros(2 * 4096)]
    segments.bn1_conv2_moments_into(a.z1, coef1, a.xp2, a.arg1, w2, a.z2, b2, rows[0], True)
    bnpool.bn_pool_elu_forward_into(b.z1, coef1, b.xp2, 2, b.arg1, True)
    conv16.conv16_forward_into(b.xp2, w2, b.z2)
    bnstats.bn_bias_moments_into(b.z2.reshape(5, 16, 256), b2, rows[1])
    _same(a, b)
    assert rows[0].tobytes() == rows[1].tobytes()

    gw = [np.zeros((16, 6, 5, 5), dtype) for _ in range(2)]
    gb = [np.zeros(16, dtype) for _ in range(2)]
    rows = [np.zeros(2 * 6144), np.zeros(2 * 6144)]
    segments.bn2_conv2_back_into(a.dp2, a.p2, a.arg2, a.z2, coef2, a.dz2, a.xp2, a.dzt2, a.dwt2, gw[0], gb[0], w2,
                                 a.dzp2, a.dp1, a.arg1, a.z1, coef1, rows[0], True)
    bnpool.bn_unpool_backward_into(b.dp2, b.p2, 0, b.arg2, b.z2, coef2, b.dz2, True)
    conv16.conv16_backward_dw_into(b.dz2, b.xp2, b.dzt2, b.dwt2)
    conv16.conv16_grads_finish_into(b.dwt2, b.dzt2, gw[1], gb[1])
    conv16.conv16_backward_dx_into(b.dz2, w2, b.dzp2, b.dp1)
    bnpool.bn_unpool_sums_into(b.dp1, b.xp2, 2, b.arg1, b.z1, coef1, rows[1])
    _same(a, b)
    assert rows[0].tobytes() == rows[1].tobytes() and gw[0].tobytes() == gw[1].tobytes()
    assert gb[0].tobytes() == gb[1].tobytes() and np.abs(rows[0]).sum() > 0

    gw = [np.zeros((6, 1, 5, 5), dtype) for _ in range(2)]
    gb = [np.zeros(6, dtype) for _ in range(2)]
    segments.bn1_conv1_back_into(a.dp1, a.xp2, a.arg1, a.z1, coef1, a.dz1, a.xp1, gw[0], gb[0], True)
    bnpool.bn_unpool_backward_into(b.dp1, b.xp2, 2, b.arg1, b.z1, coef1, b.dz1, True)
    conv32.conv32_backward_dw_into(b.dz1, b.xp1, gw[1], gb[1])
    _same(a, b)
    assert gw[0].tobytes() == gw[1].tobytes() and gb[0].tobytes() == gb[1].tobytes() and np.abs(gw[0]).sum() > 0
