"""Central finite differences (float64) on every parameter tensor of all three variants."""

import pytest

from cnncli import gradcheck as GC
from cnncli import model as M

CASES = [("none", 1)] + [(bn, bs) for bs in (2, 5) for bn in M.BATCHNORM]


@pytest.mark.parametrize("bn,bs", CASES)
def test_every_parameter_tensor_matches_finite_differences(bn, bs):
    results = GC.gradcheck(bn, batch_size=bs, seed=bs)
    assert [n for n, _ in results] == [n for n, _ in M.param_specs(12, bn)]   # every tensor covered
    bad = [(n, e) for n, e in results if not e < 1e-6]
    assert not bad, f"{bn} batch {bs}: {bad}"


def test_run_gradcheck_prints_one_line_per_tensor_and_returns_status():
    lines = []
    status = GC.run_gradcheck(variants=("channel",), batch_size=2, seed=1, echo=lines.append)
    assert status == 0
    n = len(M.param_specs(12, "channel"))
    assert len(lines) == n + 1                          # a line per tensor, then the verdict
    assert any("conv1.b" in ln and "zero by construction" in ln for ln in lines)
    assert all(ln.rstrip().endswith("ok") for ln in lines[:-1])
    assert lines[-1] == f"{n} of {n} parameter tensors within 1e-06 of float64 finite differences"
    lines = []
    assert GC.run_gradcheck(variants=("none",), batch_size=1, seed=0, echo=lines.append, tolerance=0.0) == 1
    assert lines[-1].endswith(" FAIL"), lines[-1]


def test_a_cold_cache_is_said_once_before_the_check(monkeypatch):
    import numpy as np

    from cnncli import kernelplan

    asked = []
    for lacking, expect in (({"kernel": {"sig"}}, 1), ({}, 0)):
        monkeypatch.setattr(kernelplan, "plan", lambda bn, **kw: asked.append((bn, kw)) or (lacking, {}))
        said, lines = [], []
        assert GC.run_gradcheck(variants=("none",), batch_size=1, echo=lines.append, say=said.append) == 0
        assert len(said) == expect and all("first run only" in s for s in said) and lines
    assert asked == [("none", {"dtype": np.float64, "augment": False})] * 2
