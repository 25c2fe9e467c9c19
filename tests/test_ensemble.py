"""`cnn eval` / `cnn predict` with several checkpoints or a cnn cv folder: the mean of the members'
probabilities, against the members' own Predictors and their own `cnn predict` answers; the
members must agree on classes and input; an ensemble is evaluated on --data only.
"""

from __future__ import annotations

import json
import shutil

import pytest

from cnncli import data as data_mod
from cnncli.evaluate import compute_metrics
from cnncli.predictor import Predictor
from e2e_util import invoke, make_folder, private_cache  # noqa: F401


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """A 3-fold `cnn cv` (2 epochs) on 3 classes x 10 images, and a held-out test folder."""
    tmp = tmp_path_factory.mktemp("ens")
    data = make_folder(tmp / "data", per_class=10, odd_files=False)
    test = make_folder(tmp / "test", per_class=5, seed=7, odd_files=False)
    res = invoke(["cv", "--set", f"data.train={data}", "--set", "train.epochs=2", "--set", "train.batch_size=8",
                  "--folds", "3", "-q", "--out", tmp / "cv"])
    assert res.exit_code == 0, res.output
    return tmp, test, tmp / "cv", [tmp / "cv" / f"fold-{k}" / "best.npz" for k in (1, 2, 3)]


def test_eval_of_a_cv_folder_is_the_mean_of_its_folds(folds):
    tmp, test, cv, files = folds
    res = invoke(["eval", "--checkpoint", cv, "--data", test, "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    assert metrics["checkpoint"] == [str(f) for f in files]
    images = data_mod.load_folder(test, cache=False)[0]
    mean = sum(Predictor.from_checkpoint(f).predict_proba(images.images) for f in files) / 3      # (N,C)
    expect = compute_metrics(mean, images.labels, images.classes, top_k=3)
    assert metrics["accuracy"] == expect["accuracy"] and metrics["loss"] == pytest.approx(expect["loss"], rel=1e-12)
    assert metrics["confusion"] == expect["confusion"]
    each = [arg for f in files for arg in ("--checkpoint", f)]
    again = json.loads(invoke(["eval", "--data", test, "--json", *each]).output)
    assert again == metrics                                       # the folds named one by one: the same
    text = invoke(["eval", "--checkpoint", cv, "--data", test]).output
    assert text.startswith(f"checkpoint      mean of 3: {files[0]}, {files[1]}, {files[2]}")


def test_predict_averages_what_each_fold_answers(folds):
    tmp, test, cv, files = folds
    image = sorted((test / "disc").iterdir())[0]
    answers = [json.loads(invoke(["predict", "--checkpoint", f, image, "--json", "--top-k", "3"]).output)[0]
               for f in files]
    per_fold = [{t["class"]: t["probability"] for t in a["top_k"]} for a in answers]
    mean = {c: sum(p[c] for p in per_fold) / 3 for c in per_fold[0]}
    ours = json.loads(invoke(["predict", "--checkpoint", cv, image, "--json", "--top-k", "3"]).output)[0]
    assert ours["class"] == max(mean, key=mean.get)
    for t in ours["top_k"]:
        assert t["probability"] == pytest.approx(mean[t["class"]], rel=1e-12)


def test_members_must_agree_and_an_ensemble_needs_data(folds, tmp_path):
    tmp, test, cv, files = folds
    res = invoke(["eval", "--checkpoint", cv])
    assert res.exit_code == 2 and "3 checkpoints (an ensemble): pass --data FOLDER" in res.output   # (usage: 2)
    other = make_folder(tmp_path / "four", per_class=4, odd_files=False)
    shutil.copytree(other / "disc", other / "ring")
    assert invoke(["train", "--set", f"data.train={other}", "--set", "train.epochs=1", "--out", tmp_path / "r4",
                   "-q", "--no-report"]).exit_code == 0
    res = invoke(["eval", "--checkpoint", cv, "--checkpoint", tmp_path / "r4", "--data", test])
    assert res.exit_code == 1 and "an ensemble needs the same classes" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert invoke(["train", "--set", f"data.train={test}", "--set", "train.epochs=1", "--set", "data.resize=crop",
                   "--out", tmp_path / "crop", "-q", "--no-report"]).exit_code == 0
    res = invoke(["predict", "--checkpoint", files[0], "--checkpoint", tmp_path / "crop", test])
    assert res.exit_code == 1 and "its input resize 'crop' differs from" in res.output
    single = json.loads(invoke(["eval", "--checkpoint", cv / "fold-1", "--data", test, "--json"]).output)
    assert single["checkpoint"] == str(files[0])                   # one checkpoint: as before


def test_a_checkpoint_given_twice_is_refused(folds):
    # (--checkpoint A --checkpoint A averaged a model with itself, 'mean of 2', silently)
    tmp, test, cv, files = folds
    res = invoke(["eval", "--checkpoint", cv / "fold-1", "--checkpoint", files[0], "--data", test])
    assert res.exit_code == 1 and res.output.strip() == (f"Error: {files[0]}: given twice; an ensemble averages "
                                                         "each checkpoint once"), res.output
    res = invoke(["predict", "--checkpoint", cv, "--checkpoint", cv / "fold-2" / "best.npz", test])
    assert res.exit_code == 1 and "given twice" in res.output
    import os

    os.link(files[2], tmp / "hard.npz")                            # (one file under two names)
    res = invoke(["eval", "--checkpoint", files[2], "--checkpoint", tmp / "hard.npz", "--data", test])
    assert res.exit_code == 1 and f"{tmp / 'hard.npz'}: given twice (also as {files[2]})" in res.output
