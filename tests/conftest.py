"""Test-session setup: the decoded-dataset cache goes to a temporary folder, never to ~/.cache; under
CI=true a torch that cannot be imported fails the run instead of skipping the PyTorch comparisons."""

import os
import tempfile

import pytest


def pytest_configure(config):
    if os.environ.get("CI", "").strip().lower() not in ("true", "1", "yes"):
        return
    try:
        import torch  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising something else
        raise pytest.UsageError(f"CI=true but torch cannot be imported ({type(err).__name__}: {err}); "
                                "install the test extra: pip install -e '.[test]'") from None


@pytest.fixture(autouse=True, scope="session")
def _private_dataset_cache():
    with tempfile.TemporaryDirectory(prefix="cnncli-test-cache-") as tmp:
        old = os.environ.get("CNNCLI_CACHE_DIR")
        os.environ["CNNCLI_CACHE_DIR"] = tmp
        yield
        if old is None:
            os.environ.pop("CNNCLI_CACHE_DIR", None)
        else:
            os.environ["CNNCLI_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def _warm_numba_cache():
    """Numba compiles with cache=True, and several processes compiling the same cached *parallel*
    function at once can race on the cache files (numba issue 4807); the CLI tests start `cnn`
    subprocesses. So every kernel the network uses (float32 and float64, all BN variants, training
    and inference, and the fused Adam step) is compiled here first, in this process: the
    subprocesses then load the cache."""
    import numpy as np

    from cnncli.model import BATCHNORM, Network
    from cnncli.optim import Optimizer

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((3, 1, 32, 32)).astype(dtype)
        y = np.array([0, 1, 2])
        for bn in BATCHNORM:
            net = Network(12, bn, dtype=dtype)
            net.train_step(x, y)
            net.predict_proba(x)
        Optimizer("adam", net.params.flat.size, 1e-3, dtype=dtype).step(net.params.flat, net.grads.flat)
    yield


@pytest.fixture
def two_threads():
    """numba (and so the worker pool) at two threads, or one on a one-core machine, for the test."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield
    numba.set_num_threads(before)
