"""K-fold cross-validation: the stratified folds (data.fold_split), the config keys data.folds and
data.fold, and `cnn cv` end to end: one ordinary run per fold whose validation images are that fold
(cnn eval of a fold run rebuilds them), the summary's mean and std, and `cnn cv --resume`.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cnncli.checkpoint import load as load_checkpoint
from cnncli.config import load_config
from cnncli.data import fold_split
from cnncli.errors import ConfigError
from e2e_util import cli_env, invoke, load_params, make_folder, private_cache  # noqa: F401


@pytest.mark.parametrize("counts, folds", [((12, 12, 12), 3), ((10, 3, 7, 1), 4), ((5, 5), 5), ((9,), 2)])
def test_folds_partition_every_class_evenly(counts, folds):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(1).shuffle(labels)
    vals = []
    for k in range(folds):
        tr, va = fold_split(labels, folds, k, seed=3)
        assert np.intersect1d(tr, va).size == 0 and np.array_equal(np.sort(np.r_[tr, va]), np.arange(labels.size))
        vals.append(va)
    assert np.array_equal(np.sort(np.concatenate(vals)), np.arange(labels.size))     # each image once
    sizes = [v.size for v in vals]
    assert max(sizes) - min(sizes) <= 1
    for c, n in enumerate(counts):                        # each class spread over the folds
        per_fold = [int((labels[v] == c).sum()) for v in vals]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n
    assert all(np.array_equal(fold_split(labels, folds, k, 3)[1], vals[k]) for k in range(folds))    # seeded
    assert any(not np.array_equal(fold_split(labels, folds, k, 4)[1], vals[k]) for k in range(folds))
    with pytest.raises(ValueError, match="fold 5 of 5"):
        fold_split(labels, 5, 5, 0)


@pytest.mark.parametrize("sets, needle", [
    (["data.folds=1"], "data.folds: must be 0 (off) or >= 2"),
    (["data.folds=3", "data.fold=3"], "data.fold: must be < data.folds (3), got 3"),
    (["data.folds=3", "data.val=x"], "data.folds: holds out a fold of data.train, so data.val must be null"),
])
def test_fold_keys_are_checked(sets, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, sets)
    assert needle in str(err.value)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """`cnn cv --folds 3` on 3 classes x 10 images, 2 epochs, in a folder with capitals in its name."""
    tmp = tmp_path_factory.mktemp("cv")
    data = make_folder(tmp / "data", per_class=10, odd_files=False)
    args = ["cv", "--set", f"data.train={data}", "--set", "train.epochs=2", "--set", "train.batch_size=8",
            "--folds", "3", "-q"]
    res = invoke([*args, "--out", tmp / "CV-Runs", "--json"])
    assert res.exit_code == 0, res.output
    return tmp, data, tmp / "CV-Runs", args, res


def test_each_fold_is_a_run_validated_on_its_fold(cv_run):
    tmp, data, parent, _, res = cv_run
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary == json.loads((parent / "cv.json").read_text())
    rows = summary["folds"]
    assert [r["fold"] for r in rows] == [1, 2, 3]
    for k, row in enumerate(rows):
        run = parent / f"fold-{k + 1}"
        cfg = load_config(run / "config.yaml")
        assert (cfg["data"]["folds"], cfg["data"]["fold"]) == (3, k)
        assert f"Best val loss {row['val_loss']:.4f} (epoch {row['best_epoch']}" in res.output
        assert f"is in {run / 'best.npz'}" in res.output                  # the path as given, capitals kept
        assert "Training on 20 images (3 classes), validating on 10" in res.output
        _, meta = load_checkpoint(run / "best.npz")
        assert meta["history"][-1]["val_acc"] == row["val_acc"] and meta["epoch"] == row["best_epoch"]
        ev = invoke(["eval", "--checkpoint", run, "--json"])              # the fold rebuilt from config.yaml
        assert ev.exit_code == 0, ev.output
        metrics = json.loads(ev.output)
        assert metrics["accuracy"] == pytest.approx(row["val_acc"], abs=1e-12)
        assert metrics["data"].startswith(f"fold {k + 1} of 3 of {data}")
    accs = np.array([r["val_acc"] for r in rows])
    assert summary["summary"]["val_acc"]["mean"] == pytest.approx(accs.mean())
    assert summary["summary"]["val_acc"]["std"] == pytest.approx(accs.std())


def test_a_cv_folder_given_as_one_checkpoint_points_to_its_folds(cv_run):
    _, data, parent, _, _ = cv_run
    for args in (["info", parent], ["train", "--set", f"data.train={data}", "--init-from", parent]):
        res = invoke(args)
        assert res.exit_code != 0
        assert res.output.strip().endswith("it is a cnn cv folder: give one of its fold-k runs"), res.output


def test_the_table_and_a_resume_of_unfinished_folds(cv_run, tmp_path):
    tmp, data, parent, args, _ = cv_run
    copy = tmp_path / "copy"
    shutil.copytree(parent, copy)
    for name in ("last.npz", "best.npz"):
        (copy / "fold-2" / name).unlink()                 # fold 2 stopped before its first save
    shutil.rmtree(copy / "fold-3")                        # fold 3 never started
    (copy / "cv.json").unlink()
    res = invoke(["cv", "--resume", copy, "-q"])
    assert res.exit_code == 0, res.output
    assert f"finished earlier: {copy / 'fold-1'}" in res.output
    assert f"Run folder: {copy / 'fold-1'}" not in res.output            # not set up again
    for k in (1, 2, 3):
        a, b = load_params(parent / f"fold-{k}" / "last.npz"), load_params(copy / f"fold-{k}" / "last.npz")
        assert all(np.array_equal(a[key], b[key]) for key in a), k
    ours, theirs = (json.loads((p / "cv.json").read_text())["summary"] for p in (parent, copy))
    assert ours == theirs
    acc = ours["val_acc"]
    assert f"val acc  {acc['mean']:.2%} +- {acc['std']:.2%}" in res.output
    assert not list(copy.glob("fold-*-2"))                # the folds' own folders were reused


@pytest.mark.parametrize("extra, needle", [
    (["--resume", "{tmp}"], "not a cnn cv folder (no config.yaml)"),
    (["--resume", "{tmp}", "--set", "train.epochs=3"], "--resume continues a cnn cv folder with its own"),
    (["--resume", "{tmp}", "--folds", "3"], "--resume continues a cnn cv folder with its own config.yaml and folds"),
    (["--set", "data.val={tmp}"], "data.val must be null (it is '{tmp}'; add --set data.val=null)"),
])
def test_bad_requests_are_one_line(tmp_path, extra, needle):
    res = invoke(["cv", "--set", f"data.train={tmp_path}", *[e.format(tmp=tmp_path) for e in extra]]
                 if "--resume" not in extra else ["cv", *[e.format(tmp=tmp_path) for e in extra]])
    assert res.exit_code != 0
    out = res.output.strip()
    assert len(out.splitlines()) == 1 and needle.format(tmp=tmp_path) in out, out


def test_a_run_folder_or_a_fold_given_to_cv_resume_is_refused_untouched(cv_run, tmp_path):
    # (cnn cv --resume RUN of a cnn train run, or of a cv folder's fold-1, wrote cv.json there, and a
    # fold's folder got fold-1..fold-3 trained inside it)
    _, _, parent, _, _ = cv_run
    fold = tmp_path / "fold-1"
    shutil.copytree(parent / "fold-1", fold)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((parent / "config.yaml").read_text().replace("folds: 3", "folds: 0"))
    shutil.copy(fold / "last.npz", run / "last.npz")
    for folder, hint in ((run, f"cnn train --resume {run}"), (fold, f"cnn cv --resume {tmp_path}")):
        before = sorted(p.name for p in folder.iterdir())
        res = invoke(["cv", "--resume", folder, "-q"])
        assert res.exit_code == 1 and res.output == (f"Error: {folder}: a run folder, not a cnn cv folder (the "
                                                     f"folder of its fold-k runs); continue it with: {hint}\n")
        assert sorted(p.name for p in folder.iterdir()) == before


def test_a_fold_given_to_cv_resume_as_dot_names_the_cv_folder_above_it(cv_run, tmp_path, monkeypatch):
    # (cd runs/x-cv/fold-1; cnn cv --resume . said 'continue it with: cnn cv --resume .', the fold again)
    _, _, parent, _, _ = cv_run
    shutil.copytree(parent / "fold-1", tmp_path / "fold-1")
    monkeypatch.chdir(tmp_path / "fold-1")
    res = invoke(["cv", "--resume", ".", "-q"])
    assert res.exit_code == 1 and res.output.endswith(f"; continue it with: cnn cv --resume {tmp_path}\n"), res.output


def test_ctrl_c_in_a_fold_says_how_to_go_on_and_the_resume_ends_as_one_run(cv_run, tmp_path):
    """SIGINT while fold 1 trains (a checkpoint every step): exit 130 with both resume lines; `cnn cv
    --resume` then finishes every fold with the checkpoints of an uninterrupted cv."""
    tmp, data, _, _, _ = cv_run
    sets = ["--set", f"data.train={data}", "--set", "train.epochs=60", "--set", "train.batch_size=8",
            "--set", "train.checkpoint_every=1", "--set", "train.early_stopping.patience=0", "--folds", "2", "-q"]
    ref = invoke(["cv", *sets, "--out", tmp_path / "ref"])
    assert ref.exit_code == 0, ref.output
    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "cv", *sets, "--out", str(out)], env=cli_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "fold-1" / "last.npz").exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = [ln for ln in err.splitlines() if "SIGINT" in ln]           # a requested stop: no "Error: "
    assert len(line) == 1 and line[0].startswith("SIGINT: stopped at epoch "), err
    assert "Error" not in err, err
    assert line[0].endswith(f"resume with: cnn train --resume {out / 'fold-1'}; or continue the "
                            f"cross-validation with: cnn cv --resume {out}"), line
    assert not (out / "fold-2").exists()
    res = invoke(["cv", "--resume", out, "-q"])
    assert res.exit_code == 0, res.output
    for k in (1, 2):
        for name in ("last.npz", "best.npz"):
            a, b = load_params(tmp_path / "ref" / f"fold-{k}" / name), load_params(out / f"fold-{k}" / name)
            assert all(np.array_equal(a[key], b[key]) for key in a), (k, name)


def test_ctrl_c_in_a_later_fold_s_set_up_says_to_continue_the_cv(tmp_path, monkeypatch):
    """Ctrl-C while fold 2 sets up (decoding, compiling): fold 1 is kept, so the line says `cnn cv
    --resume`, not "start the run again" (which stays for fold 1's set-up: then nothing was trained)."""
    from cnncli import train

    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    sets = ["--set", f"data.train={data}", "--set", "train.epochs=1", "--folds", "2", "-q"]
    real, calls = train.setup, []

    def setup(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "setup", setup)
    stop_at = 1
    res = invoke(["cv", *sets, "--out", tmp_path / "first"])
    assert res.exit_code == 130 and res.output.strip().endswith("nothing was trained; start the run again")
    assert not (tmp_path / "first" / "config.yaml").exists()                 # the name goes back
    stop_at, out = 3, tmp_path / "second"
    res = invoke(["cv", *sets, "--out", out])
    assert res.exit_code == 130, res.output
    assert res.output.strip().splitlines()[-1] == (
        f"SIGINT: stopped during fold 2's set-up, before its first step; continue the cross-validation with: "
        f"cnn cv --resume {out}"), res.output
    assert (out / "fold-1" / "last.npz").is_file() and not (out / "cv.json").exists()
    monkeypatch.setattr(train, "setup", real)
    res = invoke(["cv", "--resume", out, "-q"])
    assert res.exit_code == 0 and len(json.loads((out / "cv.json").read_text())["folds"]) == 2, res.output


def test_ctrl_c_while_the_ensemble_is_tested_says_to_continue_and_the_resume_tests_every_fold(tmp_path, monkeypatch):
    """Ctrl-C after the last fold, while data.test is evaluated: one line saying how to go on, no
    cv.json; `cnn cv --resume` then tests the ensemble, and a fold whose own test was stopped (no
    test_metrics.json) too, so that the summary's test metrics are over every fold."""
    from cnncli import evaluate as evaluate_mod

    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    test = make_folder(tmp_path / "test", per_class=3, seed=9, odd_files=False)
    out = tmp_path / "cv"
    real = evaluate_mod.evaluate

    def evaluate(ckpts, *args, **kw):
        if isinstance(ckpts, list):                   # the folds' ensemble
            raise KeyboardInterrupt
        return real(ckpts, *args, **kw)
    monkeypatch.setattr(evaluate_mod, "evaluate", evaluate)
    res = invoke(["cv", "--set", f"data.train={data}", "--set", f"data.test={test}", "--set", "train.epochs=1",
                  "--folds", "2", "-q", "--out", out])
    assert res.exit_code == 130, res.output
    assert res.output.strip().splitlines()[-1] == (
        f"SIGINT: stopped after the last fold, while testing on data.test; the finished folds are saved in {out}; "
        f"continue the cross-validation with: cnn cv --resume {out}"), res.output
    assert "Error" not in res.output and not (out / "cv.json").exists()
    monkeypatch.setattr(evaluate_mod, "evaluate", real)
    own = json.loads((out / "fold-2" / "test_metrics.json").read_text())
    (out / "fold-2" / "test_metrics.json").unlink()  # as if fold 2 had been stopped while testing
    res = invoke(["cv", "--resume", out, "-q", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "fold-2" / "test_metrics.json").read_text()) == own
    summary = json.loads((out / "cv.json").read_text())
    assert summary["summary"]["test_acc"]["folds"] == 2 and summary["folds"][1]["test_acc"] == own["accuracy"]
    assert summary["ensemble_test"]["num_images"] == 9


def test_a_class_with_fewer_images_than_folds_is_named_where_it_is_missing(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    (data / "solo").mkdir()
    shutil.copy(next((data / "bar").iterdir()), data / "solo" / "only.png")
    res = invoke(["cv", "--set", f"data.train={data}", "--set", "train.epochs=1", "--folds", "2", "-q",
                  "--out", tmp_path / "cv"])
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "cv" / "cv.json").read_text())["folds"]) == 2
    assert res.output.count("note: no training images of solo (all held out for validation)") == 1
    assert res.output.count("note: no validation images of solo") == 1


def test_with_data_test_each_fold_and_their_ensemble_are_tested(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    test = make_folder(tmp_path / "test", per_class=3, seed=9, odd_files=False)
    res = invoke(["cv", "--set", f"data.train={data}", "--set", f"data.test={test}", "--set", "train.epochs=1",
                  "--folds", "2", "-q", "--out", tmp_path / "cv", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    for k, row in enumerate(summary["folds"], start=1):
        own = json.loads((tmp_path / "cv" / f"fold-{k}" / "test_metrics.json").read_text())
        assert (row["test_acc"], row["test_loss"]) == (own["accuracy"], own["loss"])
    accs = np.array([r["test_acc"] for r in summary["folds"]])
    assert summary["summary"]["test_acc"]["mean"] == pytest.approx(accs.mean())
    ens = json.loads(invoke(["eval", "--checkpoint", tmp_path / "cv", "--data", test, "--json"]).output)
    assert summary["ensemble_test"]["accuracy"] == ens["accuracy"] and summary["ensemble_test"]["num_images"] == 9


def test_more_folds_than_images_is_refused(tmp_path):
    # as scikit-learn's KFold: a fold without a validation image would train a run that validates
    # on nothing (a 160-fold cv of 140 images trained 20 such runs, and its summary left them out)
    clean = make_folder(tmp_path / "clean", per_class=2, odd_files=False)           # 6 images
    res = invoke(["cv", "--set", f"data.train={clean}", "--folds", "7", "--out", tmp_path / "cv", "-q"])
    assert res.exit_code == 2 and not (tmp_path / "cv").exists(), res.output
    assert res.output.strip() == (f"Error: --folds 7 is more than the 6 image(s) of data.train ({clean}): a fold "
                                  "would hold no validation image; use at most 6"), res.output
    odd = make_folder(tmp_path / "odd", per_class=2)                  # 6 images and 2 files that do not decode
    res = invoke(["cv", "--set", f"data.train={odd}", "--folds", "7", "--out", tmp_path / "cv2", "-q"])
    assert res.exit_code == 2, res.output
    assert (f"Error: data.folds is 7 but {odd} has 6 usable image(s): a fold would hold no validation image; "
            "use at most 6 folds") in res.output
    assert not (tmp_path / "cv2").exists()                             # nothing trained: no folder left


def test_cv_takes_train_s_data_and_init_flags(cv_run, tmp_path):
    # --strict, --no-cache and --init-from as cnn train has them (cv had only --set for these)
    _, data, parent, _, _ = cv_run
    odd = make_folder(tmp_path / "odd", per_class=4)                   # with a broken file
    res = invoke(["cv", "--set", f"data.train={odd}", "--folds", "2", "--strict", "--out", tmp_path / "s", "-q"])
    assert res.exit_code != 0 and "unusable file" in res.output, res.output
    cached = sorted((tmp_path / "cache").rglob("*"))
    res = invoke(["cv", "--set", f"data.train={data}", "--set", "train.epochs=1", "--folds", "2", "--no-cache",
                  "--init-from", parent / "fold-1", "--out", tmp_path / "ft", "-q"])
    assert res.exit_code == 0, res.output
    assert sorted((tmp_path / "cache").rglob("*")) == cached                  # nothing cached
    for k in (1, 2):
        _, meta = load_checkpoint(tmp_path / "ft" / f"fold-{k}" / "last.npz")
        assert f"init_from: {parent / 'fold-1'}" in meta["config"] and "cache: false" in meta["config"]
    res = invoke(["cv", "--resume", tmp_path / "ft", "--no-cache"])
    assert res.exit_code != 0 and "--resume continues a cnn cv folder with its own config.yaml" in res.output


def test_an_init_from_that_is_no_checkpoint_is_refused_before_the_first_fold(tmp_path):
    # (it printed 'Cross-validation: ...' and '-- fold 1 of 2' and made the cv's folder before the error)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    res = invoke(["cv", "--set", f"data.train={data}", "--folds", "2", "--init-from", tmp_path / "m.onnx",
                  "--out", tmp_path / "runs" / "cv", "-q"])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == [f"Error: train.init_from: {tmp_path / 'm.onnx'}: an ONNX model, not a "
                                       "checkpoint: give the .npz it was exported from"]
    assert not (tmp_path / "runs").exists()


def test_a_class_smaller_than_the_folds_gets_a_note_and_balanced_weights_train_every_fold(tmp_path):
    # (a class of one image: cnn cv stopped at the fold holding it out, 'balanced needs images of every class',
    # and nothing said beforehand that a class had fewer images than folds)
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    for extra in sorted((data / "bar").iterdir())[1:]:
        extra.unlink()
    res = invoke(["cv", "--set", f"data.train={data}", "--set", "train.epochs=1", "--set", "train.batch_size=8",
                  "--set", "train.class_weight=balanced", "--folds", "3", "--out", tmp_path / "cv", "-q"])
    assert res.exit_code == 0, res.output
    assert "note: fewer images than the 3 folds: bar (1); some folds validate on no image of such a class" in res.output
    assert "note: no training images of bar (all held out for validation)" in res.output
    assert len(json.loads((tmp_path / "cv" / "cv.json").read_text())["folds"]) == 3


def test_a_setting_note_is_said_once_not_once_a_fold(tmp_path):
    # (a cnn cv of 3 folds said 'optim.step_size=3 does nothing in this run' three times)
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    res = invoke(["cv", "--set", f"data.train={data}", "--set", "train.epochs=1", "--set", "train.batch_size=8",
                  "--set", "optim.step_size=3", "--folds", "3", "-q", "--out", tmp_path / "cv"])
    assert res.exit_code == 0, res.output
    assert res.output.count("note: optim.step_size=3 does nothing in this run") == 1, res.output
    # a fold resumed alone says its notes; its val_split, which folds leave unused, may change
    res = invoke(["train", "--resume", tmp_path / "cv" / "fold-2", "--set", "train.epochs=2", "--set",
                  "data.val_split=0.3", "-q", "--no-report"])
    assert res.exit_code == 0 and "note: optim.step_size=3 does nothing in this run" in res.output, res.output


def test_cv_resume_never_removes_a_users_fold_named_folder(tmp_path):
    # (cnn cv --resume DIR removed DIR/fold-1 and fold-2, folders of the user's images, as unstarted folds)
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    proj = tmp_path / "proj"
    (proj / "fold-1").mkdir(parents=True)
    (proj / "fold-1" / "img.png").write_bytes(b"mine")
    (proj / "config.yaml").write_text(f"data:\n  train: {data}\n  folds: 2\ntrain:\n  epochs: 1\n")
    res = invoke(["cv", "--resume", proj, "-q"])
    assert res.exit_code != 0 and "holds files no fold's run wrote (img.png)" in res.output, res.output
    assert (proj / "fold-1" / "img.png").read_bytes() == b"mine"
