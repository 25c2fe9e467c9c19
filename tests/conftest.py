"""Test-session setup: stop signals not ignored in the processes tests start; the decoded-dataset
cache goes to a temporary folder, never to ~/.cache; under CI=true a torch that cannot be imported
fails the run instead of skipping the PyTorch comparisons."""

import os
import signal
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config):
    # the stop-signal tests send SIGINT and SIGHUP to `cnn` processes, which keep a stop signal they
    # start with ignored (nohup, a script's background job): a Python handler here is reset by exec,
    # so the processes the tests start get the default, however this session was started
    for name in ("SIGINT", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if name == "SIGINT" else (lambda *args: None))
    if os.environ.get("CI", "").strip().lower() not in ("true", "1", "yes"):
        return
    try:
        import torch  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising something else
        raise pytest.UsageError(f"CI=true but torch cannot be imported ({type(err).__name__}: {err}); "
                                "install the test extra: pip install -e '.[test]'") from None


@pytest.fixture(autouse=True)
def _stop_signals_restored():
    """Each test leaves the stop signals' handlers as it found them: one that calls a worker's start in
    this process (precompile._worker ignores SIGINT) made the `cnn` processes later tests start keep
    SIGINT ignored (they keep a stop signal they start with ignored, as POSIX tools do)."""
    sigs = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP") if hasattr(signal, name)]
    before = {sig: signal.getsignal(sig) for sig in sigs}
    yield
    for sig, handler in before.items():
        if handler is not None and signal.getsignal(sig) != handler:
            signal.signal(sig, handler)


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
def _warm_numba_cache(request, tmp_path_factory):
    """Numba compiles with cache=True, and several processes compiling the same cached *parallel*
    function at once can race on the cache files (numba issue 4807); the CLI tests start `cnn`
    subprocesses. So every kernel the network uses (float32 and float64, all BN variants, training
    and inference, and the fused Adam step) is compiled here first: by cnncli.precompile, a kernel per
    task in this and cores - 1 spawned processes (one process per kernel, so no two write one cache
    file), then loaded by a real run of each here; the subprocesses then load the cache. test_slp's
    other-settings process, when that test runs, compiles alongside (its own cache) and is waited for
    here too, so no test shares the cores with a compile."""
    import numpy as np

    from cnncli import kernelplan, precompile
    from cnncli.model import BATCHNORM, Network
    from cnncli.optim import Optimizer

    slp = None
    if any(Path(str(item.fspath)).name == "test_slp.py" for item in request.session.items):
        import test_slp

        slp = test_slp.OtherSettings(tmp_path_factory.mktemp("slp"))
        test_slp.STARTED.append(slp)

    def warm():
        rng = np.random.default_rng(0)
        with np.errstate(all="ignore"):           # a dry run's stubbed kernels leave garbage behind
            for dtype in (np.float32, np.float64):
                x = rng.standard_normal((3, 1, 32, 32)).astype(dtype)
                y = np.array([0, 1, 2])
                for bn in BATCHNORM:
                    net = Network(12, bn, dtype=dtype)
                    net.train_step(x, y)
                    net.predict_proba(x)
                opt = Optimizer("adam", net.params.flat.size, 1e-3, dtype=dtype)
                opt.step(net.params.flat, net.grads.flat)

    runs = [warm] + [kernelplan.training_run(bn, "adam", dtype) for bn in BATCHNORM
                     for dtype in (np.float32, np.float64)]
    precompile.compile_missing(runs, max(1, precompile.cpu_count() - 1))
    warm()
    if slp is not None:
        slp.wait()
    yield


@pytest.fixture
def two_threads():
    """numba (and so the worker pool) at two threads, or one on a one-core machine, for the test."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield
    numba.set_num_threads(before)
