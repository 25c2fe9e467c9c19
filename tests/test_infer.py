"""The NumPy inference forward (cnncli.infer) against the numba network, and its import promise."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cnncli import infer, model

VARIANTS = model.BATCHNORM
TOL = {np.float64: dict(rtol=1e-10, atol=1e-14), np.float32: dict(rtol=1e-5, atol=1e-7)}


def random_net(batchnorm, dtype, num_classes=7, seed=0):
    """Glorot weights plus non-zero biases, BN gamma/beta and running statistics far from (0, 1)."""
    rng = np.random.default_rng(seed)
    params = model.init_params(num_classes, batchnorm, seed=seed, dtype=dtype)
    for name, arr in params.items():
        if name.endswith(".b") or name.endswith(".beta"):
            arr[...] = rng.normal(0, 0.3, arr.shape)
        elif name.endswith(".gamma"):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
    buffers = model.init_buffers(num_classes, batchnorm, dtype=dtype)
    for name, arr in buffers.items():
        arr[...] = rng.uniform(0.3, 3.0, arr.shape) if name.endswith("var") else rng.normal(0, 0.5, arr.shape)
    return params, (buffers if batchnorm != "none" else None)


def images(n, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batchnorm", VARIANTS)
@pytest.mark.parametrize("n", [1, 5, 37])  # 37: several infer.CHUNK passes and a ragged last one
def test_matches_the_numba_network(batchnorm, dtype, n):
    params, buffers = random_net(batchnorm, dtype)
    x = images(n, dtype)
    want = model.predict_proba(params, x, batchnorm, eps=1e-3, buffers=buffers)
    got = infer.predict_proba(params, x, batchnorm, eps=1e-3, buffers=buffers)
    assert got.shape == (n, 7) and got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, **TOL[dtype])
    assert 1e-3 < want.min() and want.max() < 1 - 1e-3  # not saturated: rounding of the logits shows


@pytest.mark.parametrize("batchnorm", ["unit", "channel"])
def test_running_statistics_and_eps_are_used(batchnorm):
    """The comparison above would not notice BN being skipped if the statistics were (0, 1)."""
    params, buffers = random_net(batchnorm, np.float64)
    x = images(3, np.float64)
    base = infer.predict_proba(params, x, batchnorm, buffers=buffers)
    for name in buffers:
        moved = buffers.copy()
        moved[name][...] *= 1.5
        assert not np.allclose(infer.predict_proba(params, x, batchnorm, buffers=moved), base, rtol=1e-6), name
    assert not np.allclose(infer.predict_proba(params, x, batchnorm, eps=0.5, buffers=buffers), base, rtol=1e-6)


def test_extreme_inputs_stay_finite_without_warnings():
    params, _ = random_net("none", np.float32)
    x = images(4, np.float32) * 1e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = infer.predict_proba(params, x)
    assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, model.predict_proba(params, x), rtol=1e-4, atol=1e-6)


def test_bad_arguments_raise_value_errors_naming_them():
    params, buffers = random_net("channel", np.float32)
    x = images(2, np.float32)
    with pytest.raises(ValueError, match="needs buffers"):
        infer.predict_proba(params, x, "channel")
    with pytest.raises(ValueError, match="x must be"):
        infer.predict_proba(params, x.astype(np.float64), "channel", buffers=buffers)
    with pytest.raises(ValueError, match="x must be"):
        infer.predict_proba(params, x[:, :, :16], "channel", buffers=buffers)
    with pytest.raises(ValueError, match="batch is empty"):
        infer.predict_proba(params, x[:0], "channel", buffers=buffers)
    with pytest.raises(ValueError, match="bn1.gamma"):
        infer.predict_proba(params, x, "unit", buffers=buffers)
    with pytest.raises(ValueError, match="batchnorm must be"):
        infer.predict_proba(params, x, "layer", buffers=buffers)
    broken = dict(buffers)
    del broken["bn2.running_var"]
    with pytest.raises(ValueError, match="bn2.running_var"):
        infer.predict_proba(params, x, "channel", buffers=broken)


def test_openblas_thread_count_is_restored():
    from cnncli.blas import threads_api

    api = threads_api()
    if api is None:
        pytest.skip("numpy's OpenBLAS is not reachable through ctypes here")
    old = api[0]()
    api[1](2)
    try:
        params, _ = random_net("none", np.float32)
        infer.predict_proba(params, images(2, np.float32))
        assert api[0]() == 2
    finally:
        api[1](old)


@pytest.mark.parametrize("module", ["cnncli.infer", "cnncli.predictor", "cnncli.evaluate"])
def test_importing_the_numpy_path_does_not_import_numba(module):
    code = f"import sys, {module}; print('numba' in sys.modules, 'cnncli.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
