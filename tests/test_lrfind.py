"""`cnn lr-find`: the rates rise geometrically, the smoothing and the suggestion follow the returned
losses (recomputed here by plain loops), a diverging test stops early, runs repeat bit for bit, and
nothing is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnncli import lrfind
from e2e_util import invoke, make_folder, private_cache, write_config  # noqa: F401


def _smooth_loop(losses, beta=0.98):
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def _steepest(lrs, smoothed, skip_begin=10, skip_end=1):
    # the rate where the smoothed loss falls fastest before its lowest point: central differences,
    # one-sided at the ends
    y = smoothed[skip_begin:len(smoothed) - skip_end]
    y = y[:min(range(len(y)), key=lambda i: (y[i], i)) + 1]
    slope = [y[1] - y[0]] + [(y[i + 1] - y[i - 1]) / 2 for i in range(1, len(y) - 1)] + [y[-1] - y[-2]]
    return lrs[skip_begin + min(range(len(slope)), key=lambda i: (slope[i], i))]


def test_rates_smoothing_and_suggestion_by_hand():
    lrs = lrfind.rates(1e-5, 1e-1, 41)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-1)
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** 0.1)
    losses = [3.0] * 20 + [3.0 - 0.5 * k for k in range(1, 4)] + [1.5] * 18     # the fall at steps 20-22
    smoothed = lrfind.smooth(losses)
    assert smoothed[0] == losses[0] and np.allclose(smoothed, _smooth_loop(losses), rtol=0, atol=1e-12)
    assert lrfind.suggest(lrs, smoothed) == _steepest(list(lrs), list(smoothed))
    assert 20 <= list(lrs).index(lrfind.suggest(lrs, smoothed)) <= 23
    assert lrfind.suggest(lrs[:12], smoothed[:12]) is None                      # too few points


def test_the_suggestion_lies_before_the_lowest_loss():
    # a fall to a minimum, then a blow-up with a dip in it (a cnn lr-find run on a 140-image folder
    # suggested such a dip, past its lowest loss, where training collapsed)
    lrs = lrfind.rates(1e-5, 1.0, 60)
    smoothed = ([3.0] * 15 + [3.0 - 0.2 * k for k in range(1, 11)] + [1.0] * 5
                + [1.0 + 0.5 * k for k in range(1, 16)] + [8.5 - 3.0] + [5.6 + 0.1 * k for k in range(14)])
    assert len(smoothed) == 60
    s = lrfind.suggest(lrs, smoothed)
    assert s == _steepest(list(lrs), list(smoothed)) and 15 <= list(lrs).index(s) <= 25
    rising = [1.0] * 10 + [1.0 + k for k in range(20)]
    assert lrfind.suggest(lrs[:30], rising) is None                                  # it never falls
    r = {"lr": list(lrs[:30]), "smoothed": rising, "stopped": None, "suggested": None}
    assert "no suggestion: the smoothed loss did not fall after step 10" in lrfind.format_result(r, "adam")


@pytest.fixture()
def cfg(tmp_path):
    return write_config(tmp_path / "c.yaml", make_folder(tmp_path / "data", per_class=8), tmp_path / "runs" / "x")


def test_a_run_follows_its_own_losses_repeats_and_writes_nothing(cfg, tmp_path):
    runs = []
    for _ in range(2):
        res = invoke(["lr-find", "--config", cfg, "--steps", "30", "--min-lr", "1e-5", "--max-lr", "1e-2", "--json"])
        assert res.exit_code == 0, res.stderr
        runs.append(json.loads(res.stdout))
    r = runs[0]
    assert runs[1] == r                                              # bit for bit
    assert r["stopped"] is None and len(r["lr"]) == len(r["loss"]) == 30
    assert r["lr"] == pytest.approx(list(lrfind.rates(1e-5, 1e-2, 30)), rel=1e-12)
    assert np.isfinite(r["loss"]).all() and r["smoothed"] == pytest.approx(_smooth_loop(r["loss"]), rel=1e-12)
    assert r["suggested"] == _steepest(r["lr"], r["smoothed"])
    assert not (tmp_path / "runs").exists()
    text = invoke(["lr-find", "--config", cfg, "--steps", "30", "--min-lr", "1e-5", "--max-lr", "1e-2",
                   "--set", "train.seed=0"]).stdout                 # (the default seed: the same test)
    assert f"suggested optim.lr: {r['suggested']:.3g} (steepest descent of the smoothed loss before its lowest point, adam)" in text
    assert f"try: cnn train --config {cfg} --set train.seed=0 --set optim.lr={r['suggested']:.3g}" in text


def test_a_diverging_test_stops_early_and_says_why(cfg):
    res = invoke(["lr-find", "--config", cfg, "--set", "optim.name=sgd", "--steps", "60", "--min-lr", "1e-3",
                  "--max-lr", "1e6", "--json"])
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["stopped"] and len(r["loss"]) < 60
    assert r["suggested"] is None or r["suggested"] < r["lr"][-1]


@pytest.mark.parametrize("args, needle", [
    (["--min-lr", "1", "--max-lr", "0.1"], "Invalid value for --min-lr: 1 must be > 0 and below --max-lr 0.1"),
    (["--set", "optim.nmae=sgd"], "did you mean"),
])
def test_bad_arguments_are_one_line(cfg, args, needle):
    res = invoke(["lr-find", "--config", cfg, *args])
    assert res.exit_code == 2 and needle in res.stderr and "Traceback" not in res.output   # (usage: 2, not 1)


def test_plot_is_a_png_of_the_curve(cfg, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot is an optional extra (cnncli[plots])")
    from PIL import Image

    png = tmp_path / "lr.png"
    res = invoke(["lr-find", "--config", cfg, "--steps", "30", "--plot", png])
    assert res.exit_code == 0, res.stderr
    assert f"plot: {png}" in res.stderr and "suggested optim.lr" in res.stdout
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
        assert len(np.unique(np.asarray(im.convert("L")))) > 10   # a drawing, not a blank canvas
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".lr.png")] == []   # no temp file left
    res = invoke(["lr-find", "--config", cfg, "--steps", "30", "--plot", tmp_path / "no" / "such" / "dir.png"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip() == f"Error: --plot {tmp_path / 'no/such/dir.png'}: no folder {tmp_path / 'no/such'} " \
                                 "to write the plot in"                 # (before the test, not after it)
    res = invoke(["lr-find", "--config", cfg, "--steps", "30", "--plot", tmp_path / "lr.pdf"])
    assert res.exit_code == 0 and f"note: --plot {tmp_path / 'lr.pdf'} does not end in .png; it holds a PNG" \
        in res.stderr


def test_fewer_steps_than_a_suggestion_needs_are_refused_by_the_option():
    from cnncli import lrfind

    res = invoke(["lr-find", "--steps", str(lrfind.MIN_STEPS - 1)])
    assert res.exit_code == 2 and f"{lrfind.MIN_STEPS - 1} is not in the range x>={lrfind.MIN_STEPS}" in res.output
    assert f"at least {lrfind.MIN_STEPS}:" in invoke(["lr-find", "--help"]).output
