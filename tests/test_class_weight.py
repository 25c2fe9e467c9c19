"""train.class_weight through the CLI: on a folder with 10:1 class imbalance, `balanced` raises the
minority class's recall on a balanced held-out folder (cnn eval), and macro-F1 is reported.

The two classes overlap (disc brightness drawn from overlapping ranges), so an unweighted loss
moves the decision towards the majority class; weighting each class by n / (C * n_c) moves it back.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from e2e_util import run_cli


def _disc(rng, lo, hi):
    img = Image.new("L", (32, 32), 20)
    c = 16 + rng.uniform(-3, 3, size=2)
    r = rng.uniform(7, 10)
    ImageDraw.Draw(img).ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=int(rng.integers(lo, hi)))
    return img


def _folder(root, counts, seed):
    """root/dim (discs of brightness 90..170) and root/bright (140..220): overlapping classes."""
    rng = np.random.default_rng(seed)
    for name, (lo, hi) in (("bright", (140, 221)), ("dim", (90, 171))):
        (root / name).mkdir(parents=True)
        for i in range(counts[name]):
            _disc(rng, lo, hi).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class_weight")
    train = _folder(tmp / "train", {"dim": 300, "bright": 30}, seed=1)       # 10:1
    test = _folder(tmp / "test", {"dim": 150, "bright": 150}, seed=2)
    return tmp, train, test


def _train_and_eval(tmp, train, test, weight):
    out = tmp / f"run-{weight}"
    res = run_cli(["train", "--config", "configs/plain.yaml", "-q", "--no-report", "--out", out,
                   "--set", f"data.train={train}", "--set", "train.epochs=15", "--set", "train.batch_size=32",
                   "--set", "train.early_stopping.patience=0", "--set", f"train.class_weight={weight}"], tmp,
                  cwd=_repo())
    assert res.returncode == 0, res.stderr
    said = [line for line in res.stderr.splitlines() if line.startswith("Epochs: ")]
    assert len(said) == 1 and (said[0].endswith("; class weights balanced (bright 5.5, dim 0.55)")
                               if weight == "balanced" else "class weights" not in said[0]), said
    ev = run_cli(["eval", "--checkpoint", out / "last.npz", "--data", test, "--json"], tmp)
    assert ev.returncode == 0, ev.stderr
    return json.loads(ev.stdout)


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_balanced_class_weight_raises_minority_recall(folders):
    tmp, train, test = folders
    plain = _train_and_eval(tmp, train, test, "none")
    balanced = _train_and_eval(tmp, train, test, "balanced")
    r_plain, r_bal = plain["per_class"]["bright"]["recall"], balanced["per_class"]["bright"]["recall"]
    assert r_bal > r_plain + 0.05, (r_plain, r_bal)          # measured 0.63 -> 0.76 here
    dim_plain, dim_bal = plain["per_class"]["dim"]["recall"], balanced["per_class"]["dim"]["recall"]
    assert dim_bal < dim_plain, (dim_plain, dim_bal)         # the price: the decision moved into the majority class
    assert 0 <= plain["macro_f1"] <= 1 and 0 <= balanced["macro_f1"] <= 1


def test_class_weight_for_an_unknown_class_is_refused_before_training(folders, tmp_path):
    tmp, train, _ = folders
    res = run_cli(["train", "--config", "configs/plain.yaml", "-q", "--no-report", "--out", tmp_path / "r",
                   "--set", f"data.train={train}", "--set", "train.class_weight={brigth: 3}"], tmp, cwd=_repo())
    assert res.returncode != 0
    assert "brigth" in res.stderr and "did you mean 'bright'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "last.npz").exists()


def test_the_start_line_shows_the_rare_classes_weights_when_not_all_fit():
    # (12 classes, the rare one last: its weight, the only one that differs, was behind the "...")
    import numpy as np

    from cnncli.train import _weights_text

    classes = [f"c{i:02d}" for i in range(11)] + ["star"]
    weights = np.array([0.923] * 11 + [11.077])
    assert _weights_text("balanced", weights, classes) == (
        "; class weights balanced (highest first: star 11.1, c00 0.923, c01 0.923, c02 0.923, c03 0.923, c04 0.923, "
        "...)")
