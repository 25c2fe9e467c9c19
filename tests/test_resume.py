"""Interruptions through real processes: kill -9 at several points, SIGINT/SIGTERM, then --resume.

The promise under test: the resumed run's final parameters, BN statistics and optimizer state are
bitwise identical to those of an uninterrupted run with the same config and thread count.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from e2e_util import cli_env, load_params, make_folder, run_cli, write_config

EPOCHS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = make_folder(tmp / "data", per_class=40, odd_files=False)
    cfg = write_config(tmp / "cfg.yaml", data, tmp / "ref", epochs=EPOCHS, batch_size=4, checkpoint_every=1)
    proc = _start(tmp, cfg, tmp / "ref")
    _wait_for(tmp / "ref" / "last.npz", proc)
    t0 = time.perf_counter()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    span = time.perf_counter() - t0       # first checkpoint -> end: the window the kills must land in
    return tmp, data, cfg, load_params(tmp / "ref" / "last.npz"), span


def _start(tmp, cfg, out):
    args = [sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "-q", "--no-report", "--out", str(out),
            "--set", "model.batchnorm=channel", "--set", "train.threads=2"]
    return subprocess.Popen(args, env=cli_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120.0):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared; process ended with {proc.returncode}")
        time.sleep(0.005)


def _assert_same(ref, path):
    got = load_params(path)
    assert ref.keys() == got.keys()
    for k in ref:
        assert np.array_equal(ref[k], got[k]), k


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6])
def test_kill_9_then_resume_is_bitwise_identical(setup, tmp_path, fraction):
    """kill -9 at a fraction of the reference run's span after its first checkpoint (the span is
    measured, so the kills land inside the run however fast this machine is)."""
    tmp, data, cfg, ref, span = setup
    out = tmp_path / "run"
    proc = _start(tmp, cfg, out)
    _wait_for(out / "last.npz", proc)
    delay = fraction * span
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the run finished before the kill (delay {delay:.2f}s of a {span:.2f}s span)")
    res = run_cli(["train", "--resume", out, "-q", "--no-report"], tmp)
    assert res.returncode == 0, res.stderr
    _assert_same(ref, out / "last.npz")
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == EPOCHS + 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_says_how_to_resume(setup, tmp_path, sig):
    tmp, data, cfg, ref, _ = setup
    out = tmp_path / "run"
    proc = _start(tmp, cfg, out)
    _wait_for(out / "last.npz", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: cnn train --resume" in err and "Traceback" not in err
    last = err.strip().splitlines()[-1]                  # a requested stop, said as such: no "Error: "
    assert last.startswith(f"{sig.name}: stopped at epoch ") and "Error" not in err, err
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    res = run_cli(["train", "--resume", out / "last.npz", "-q", "--no-report"], tmp)
    assert res.returncode == 0, res.stderr
    _assert_same(ref, out / "last.npz")
