"""The whole network's gradients at batch 64 (eight micro-shards on the worker threads, summed in
the fixed tree; with BN the statistics summed over the shards) against tests/reference.py's
independent float64 backward, and under BN the analytic gradient of the biases before each BN (which BN cancels) is ~0."""

import numpy as np
import pytest

import reference as R
from cnncli import model as M


def _batch(n, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 32, 32)), rng.integers(0, 12, n).astype(np.int64)


@pytest.mark.parametrize("bn", M.BATCHNORM)
def test_batch_64_gradients_match_the_independent_reference(bn):
    net = M.Network(12, bn, dtype=np.float64, seed=1)
    rng = np.random.default_rng(7)
    for name, arr in net.params.items():        # non-trivial biases, gammas and betas
        if name.endswith((".b", "gamma", "beta")):
            arr[...] += rng.normal(0, 0.3, arr.shape)
    x, y = _batch(64)
    params = {k: v.copy() for k, v in net.params.items()}
    loss, _ = net.train_step(x, y)
    assert len(net._plan(64).ws) == 8, "batch 64 must run as eight micro-shards"
    ref_loss, ref = R.network_loss_and_grads(params, x, y, bn, net.eps)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert set(ref) == set(net.grads), (sorted(ref), sorted(net.grads))
    scale = max(np.abs(g).max() for g in ref.values())   # biases before BN are ~1e-17: absolute there
    for name, g in ref.items():
        np.testing.assert_allclose(net.grads[name], g, rtol=1e-8, atol=1e-10 * scale, err_msg=name)


@pytest.mark.parametrize("bn", ["unit", "channel"])
def test_bias_before_batchnorm_has_zero_analytic_gradient(bn):
    net = M.Network(12, bn, dtype=np.float64, seed=2)
    x, y = _batch(64, seed=4)
    net.train_step(x, y)
    weight_scale = min(np.abs(net.grads[w]).max() for w in ("conv1.w", "conv2.w", "fc1.w"))
    assert weight_scale > 1e-8            # the weights do get a gradient: the check below is not vacuous
    for name in ("conv1.b", "conv2.b", "fc1.b"):
        assert np.abs(net.grads[name]).max() <= 1e-9 * weight_scale, name
