"""cnncli.kernels turns on LLVM's SLP vectorizer (numba leaves it off by default after
miscompilations elsewhere). Without fastmath it may not change a single float result, so a build
with it and a build without it must agree bit for bit. This test runs the same training steps and
predictions here and in a fresh process with the other setting (and its own numba cache, so
nothing compiled with one setting is loaded by the other) and compares every output array.

Run as a script (`python tests/test_slp.py OUT.npz`) it writes the outputs of this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def outputs() -> dict:
    """float32 outputs that go through every training and inference kernel of the network."""
    from cnncli import model as M
    from cnncli.optim import Optimizer

    out = {}
    rng = np.random.default_rng(5)
    for bn in ("none", "unit", "channel"):
        net = M.Network(12, bn, dtype=np.float32, seed=3)
        opt = Optimizer("adamw", net.params.flat.size, 0.05, weight_decay=0.01)
        for n in (5, 24):                      # one micro-shard and three
            x = rng.standard_normal((n, 1, 32, 32)).astype(np.float32)
            y = rng.integers(0, 12, n)
            loss, probs = net.train_step(x, y)
            out[f"{bn}/{n}/loss"] = np.array(loss)
            out[f"{bn}/{n}/probs"] = probs
            out[f"{bn}/{n}/grads"] = net.grads.flat.copy()
            net.params.flat -= 0.05 * net.grads.flat      # so the inference below sees trained weights
            opt.step(net.params.flat, net.grads.flat)      # and the fused Adam kernel runs too
            out[f"{bn}/{n}/params"] = net.params.flat.copy()
        out[f"{bn}/buffers"] = net.buffers.flat.copy()
        for n in (1, 8, 40):                   # the serial kernel (<= 8 images) and the parallel one
            x = rng.standard_normal((n, 1, 32, 32)).astype(np.float32)
            out[f"{bn}/predict{n}"] = net.predict_proba(x)
    return out


def precompile_outputs() -> int:
    """Compile every kernel outputs() calls on every core this process may use (cnncli.precompile: a
    kernel per task, here and in spawned workers that inherit this process's settings and cache),
    rather than one by one as outputs() meets them -> the (kernel, types) compiled. While conftest's
    warm-up compiles, the two share the cores; once it is done, this one has them all."""
    from cnncli import precompile

    return precompile.compile_missing([outputs], precompile.cpu_count() - 1)


class OtherSettings:
    """This file run as a script in a fresh process with the other SLP setting and its own numba cache
    (compiling every kernel there takes a minute or more: tests/conftest.py starts it with the
    session's warm-up so the two compile side by side)."""

    def __init__(self, folder: Path):
        import numba

        self.here = bool(numba.config.SLP_VECTORIZE)
        self.path = folder / "other.npz"
        env = dict(os.environ, NUMBA_SLP_VECTORIZE="0" if self.here else "1",
                   NUMBA_CACHE_DIR=str(folder / "numba-cache"))
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.path)], env=env,
                                     cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.result = None

    def wait(self):
        """-> (returncode, stdout, stderr) of the process, once it ends (killed after 15 minutes)."""
        if self.result is None:
            try:
                out, err = self.proc.communicate(timeout=900)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self.result = (self.proc.returncode, out, err)
        return self.result


STARTED = []     # the OtherSettings tests/conftest.py started with the warm-up


def test_slp_vectorizer_changes_no_bits(tmp_path):
    other = STARTED.pop() if STARTED else OtherSettings(tmp_path)
    code, out, err = other.wait()
    assert code == 0, err[-3000:]
    assert out.strip() == f"SLP {'off' if other.here else 'on'}"     # the other process really differs
    mine = outputs()
    with np.load(other.path) as theirs:
        assert sorted(theirs.files) == sorted(mine)
        differ = [k for k in mine if not np.array_equal(mine[k], theirs[k])]
    assert not differ, f"SLP {'on' if other.here else 'off'} vs {'off' if other.here else 'on'} differ in: {differ}"


if __name__ == "__main__":
    import numba

    from cnncli import kernels  # noqa: F401  (sets the default before numba compiles anything)

    precompile_outputs()
    np.savez(sys.argv[1], **outputs())
    print(f"SLP {'on' if numba.config.SLP_VECTORIZE else 'off'}")
