"""Resume rules and run-folder edge cases through the CLI (issue 18): frozen keys, stopped-early runs,
another --out or working directory, no validation images, names that are not valid UTF-8, atomic run
folders, stray temporary files, non-finite checkpoints, train.top_k. Each test fails on the old behaviour."""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

from cnncli import checkpoint, runfolder
from cnncli.errors import CnnError
from cnncli.cli import cli
from e2e_util import load_params, make_folder, write_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def train(cfg, *extra):
    res = invoke("train", "--config", cfg, "-q", "--no-report", *extra)
    assert res.exit_code == 0, res.output
    return res


def rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("rr") / "data", per_class=12, odd_files=False)


@pytest.fixture()
def run1(data, tmp_path):
    """A finished 1-epoch run (batch 8, checkpoint at epoch ends)."""
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    train(cfg)
    return tmp_path / "run"


@pytest.mark.parametrize("key, value", [
    ("model.bn_eps", "100"), ("model.batchnorm", "unit"), ("data.resize", "crop"), ("data.normalize", "false"),
    ("train.batch_size", "16"), ("optim.name", "sgd"), ("train.seed", "5"), ("model.num_classes", "4"),
    ("data.val", "/srv/val"),        # (a split's run validated on a folder: the split's images were trained on)
])
def test_resume_refuses_a_frozen_key_before_reading_data(data, run1, tmp_path, key, value):
    moved = tmp_path / "moved"
    os.rename(data, moved)          # the data is gone: the refusal must come before any data is read
    try:
        res = invoke("train", "--resume", run1, "--set", f"{key}={value}", "--set", "train.epochs=2", "-q", "--no-report")
    finally:
        os.rename(moved, data)
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert key in line and value in line.lower() and "cannot change on --resume" in line and str(run1) in line
    assert "has None" not in line, line                            # (model.num_classes: "has 3 (from its data)")
    assert len(rows(run1)) == 1     # nothing was trained


def test_print_config_of_a_resume_refuses_a_frozen_key_as_the_resume_does(run1):
    # --print-config printed the changed architecture with exit 0, and the resume it shows then refused it
    for extra in ([], ["--print-config"]):
        res = invoke("train", "--resume", run1, "--set", "model.batchnorm=unit", *extra)
        assert res.exit_code == 2, res.output
        assert "model.batchnorm cannot change on --resume" in res.output.strip().splitlines()[-1]


def test_resume_takes_model_num_classes_set_to_the_runs_own_count(run1):
    # the run's config leaves it to the data (null): setting it to the 3 classes the network has is no
    # change (it said "last.npz has None, the config now says 3")
    res = invoke("train", "--resume", run1, "--set", "model.num_classes=3", "--set", "train.epochs=2", "-q",
                 "--no-report")
    assert res.exit_code == 0, res.output
    assert len(rows(run1)) == 2


def test_resume_from_another_working_directory_trains_only_the_new_epochs(data, tmp_path, monkeypatch):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    os.symlink(data, start / "imgs")
    monkeypatch.chdir(start)
    train(write_config(start / "c.yaml", "imgs", start / "run", epochs=1))
    first = rows(start / "run")
    steps_per_epoch = int(first[0]["step"])
    monkeypatch.chdir(elsewhere)     # "imgs" does not exist here
    res = invoke("train", "--resume", start / "run", "--set", "train.epochs=3", "-q", "--no-report")
    assert res.exit_code == 0, res.output
    after = rows(start / "run")
    assert after[0] == first[0]      # epoch 1 (time_s included) untouched: it was not retrained
    assert [int(r["epoch"]) for r in after] == [1, 2, 3]
    assert [int(r["step"]) for r in after] == [steps_per_epoch * e for e in (1, 2, 3)]
    _, meta = checkpoint.load(start / "run" / "last.npz")
    assert meta["step"] == 3 * steps_per_epoch and meta["epoch"] == 3


def _stopped_early(data, tmp_path, out="run"):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / out, epochs=6)
    res = train(cfg, "--set", "train.early_stopping.patience=1", "--set", "train.early_stopping.min_delta=10.0")
    assert "Early stopping" in res.output and len(rows(tmp_path / out)) == 2
    return tmp_path / out


def test_stopped_early_run_resumes_as_nothing_to_do(data, tmp_path):
    run = _stopped_early(data, tmp_path)
    before = load_params(run / "last.npz")
    res = invoke("train", "--resume", run, "-q", "--no-report")
    assert res.exit_code == 0 and "Nothing to do" in res.output and "early stopping" in res.output
    after = load_params(run / "last.npz")
    assert all(np.array_equal(before[k], after[k]) for k in before) and len(rows(run)) == 2


def test_a_finished_run_is_nothing_to_do_before_any_data_is_read(data, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    cfg = write_config(tmp_path / "c.yaml", folder, tmp_path / "run", epochs=1)
    assert train(cfg).exit_code == 0
    shutil.rmtree(folder)                                          # no data to read: none is needed
    res = invoke("train", "--resume", tmp_path / "run", "-q")           # (the run had --no-report)
    assert res.exit_code == 0 and "Nothing to do: the run already completed 1 epoch(s)" in res.output
    assert "Report:" not in res.output and not (tmp_path / "run" / "report").exists()   # nothing new to draw
    res = invoke("train", "--resume", tmp_path / "run", "-q", "--out", tmp_path / "copy")
    assert res.exit_code == 0 and "Nothing to do" in res.output and res.stdout.strip() == str(tmp_path / "run")
    assert not (tmp_path / "copy").exists()          # no folder holding a lone best.npz
    res = invoke("train", "--resume", tmp_path / "run", "-q", "--no-report", "--set", "train.epochs=2")
    assert res.exit_code != 0 and "does not exist" in res.output   # more epochs: the data is read again


def test_a_resume_that_lowers_train_epochs_below_the_epochs_done_says_so(data, tmp_path):
    train(write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=2))
    res = invoke("train", "--resume", tmp_path / "run", "--set", "train.epochs=1", "-q")
    assert res.exit_code == 0 and "Nothing to do: train.epochs 1 is below the 2 epoch(s) the run has already " \
        "done (raise it above 2 to continue)." in res.output, res.output


def test_stopped_early_run_continues_when_epochs_are_raised(data, tmp_path):
    run = _stopped_early(data, tmp_path)
    res = invoke("train", "--resume", run, "--set", "train.epochs=8", "--set", "train.early_stopping.min_delta=0",
                 "-q", "--no-report")
    assert res.exit_code == 0, res.output
    assert "Nothing to do" not in res.output and len(rows(run)) > 3   # a fresh patience window, not one epoch


def test_resume_into_another_out_names_only_files_that_exist(data, tmp_path):
    run = _stopped_early(data, tmp_path)
    other = tmp_path / "other"
    res = invoke("train", "--resume", run, "--out", other, "--set", "train.epochs=8",
                 "--set", "train.early_stopping.patience=2", "-q", "--no-report")
    assert res.exit_code == 0, res.output
    assert (other / "best.npz").is_file() and (other / "last.npz").is_file()
    for word in res.output.split():                 # (every checkpoint path named; 'best.npz' alone is a word)
        if os.sep in word and (word.endswith(".npz") or word.endswith(".npz:")):
            assert os.path.exists(word.rstrip(":")), (word, res.output)
    import yaml

    assert yaml.safe_load((other / "config.yaml").read_text())["out"] == str(other)   # where the run now lives
    import shutil

    copy = tmp_path / "copy"                                            # a run whose config says out: run
    shutil.copytree(run, copy)
    for args in ([], ["--config", tmp_path / "c.yaml"]):                # --print-config says where it would go
        printed = invoke("train", "--resume", copy, *args, "--print-config").output
        assert yaml.safe_load(printed)["out"] == str(copy), printed
        printed = invoke("train", "--resume", run, *args, "--out", other, "--print-config").output
        assert yaml.safe_load(printed)["out"] == str(other), printed


def test_no_validation_images_warns_once_and_tracks_the_training_loss(tmp_path):
    tiny = make_folder(tmp_path / "tiny", per_class=1, odd_files=False)   # one image a class: none held out
    res = train(write_config(tmp_path / "c.yaml", tiny, tmp_path / "run", epochs=2, batch_size=2))
    assert res.output.count("no validation images") == 1
    assert "nan" not in res.output.lower() and "inf" not in res.output.split("Done")[-1]
    assert (tmp_path / "run" / "best.npz").is_file()
    _, meta = checkpoint.load(tmp_path / "run" / "best.npz")
    assert meta["best_val_loss"] == pytest.approx(float(rows(tmp_path / "run")[meta["epoch"] - 1]["train_loss"]))


@pytest.mark.parametrize("split, held_out", [(0, 0), (0.25, 3)])
def test_val_split_zero_trains_on_every_image(tmp_path, split, held_out):
    root = make_folder(tmp_path / "data", per_class=4, odd_files=False)      # 3 classes x 4 images
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path / "run", epochs=2, batch_size=4)
    res = invoke("train", "--config", cfg, "--set", f"data.val_split={split}", "--no-report")
    assert res.exit_code == 0, res.output
    assert f"Training on {12 - held_out} images (3 classes), validating on {held_out};" in res.output
    assert "adam lr=0.003 cosine (warmup 1 epoch), batch 4," in res.output     # (the warmup shown, as cnn info does)
    assert res.output.count("no validation images (data.val_split is 0)") == (split == 0)
    if split == 0:
        assert all(r["val_loss"] == "nan" for r in rows(tmp_path / "run"))
        _, meta = checkpoint.load(tmp_path / "run" / "best.npz")
        assert meta["best_val_loss"] == pytest.approx(float(rows(tmp_path / "run")[meta["epoch"] - 1]["train_loss"]))
        assert "best.npz and early stopping use the training loss instead" in res.output
        res = invoke("train", "--config", cfg, "--set", f"data.val_split={split}", "--no-report",
                     "--set", "train.monitor=val_acc", "--out", tmp_path / "by-acc")    # (the note said "loss")
        assert res.exit_code == 0 and "best.npz and early stopping use the training accuracy instead" in res.output


def test_names_that_are_not_utf8_never_give_a_traceback(tmp_path):
    pytest.importorskip("matplotlib")
    root = make_folder(tmp_path / "data", per_class=8, odd_files=False)
    os.rename(os.fsencode(root / "disc"), os.fsencode(root) + b"/d\xffisc")
    (root / "bar" / os.fsdecode(b"bad\xfe.png")).write_bytes(b"junk")
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path / "run", epochs=1)
    res = invoke("train", "--config", cfg, "-q")
    assert res.exit_code == 0, res.output
    assert "bad\\xfe.png" in (tmp_path / "run" / "skipped.txt").read_text(encoding="utf-8")
    _, meta = checkpoint.load(tmp_path / "run" / "last.npz")
    assert os.fsdecode(b"d\xffisc") in meta["classes"]           # round-trips exactly
    for args in (["eval", "--checkpoint", tmp_path / "run", "--data", root],
                 ["eval", "--checkpoint", tmp_path / "run", "--data", root, "--json"],
                 ["predict", "--checkpoint", tmp_path / "run", root / os.fsdecode(b"d\xffisc")],
                 ["report", tmp_path / "run"]):
        res = invoke(*args)
        assert res.exit_code == 0, (args, res.output)
    # every --json shows such a name as the text does (\xNN), never a lone surrogate, which strict
    # JSON readers (jq, a browser) refuse
    for args, names in ((["eval", "--checkpoint", tmp_path / "run", "--data", root, "--json"],
                         lambda d: list(d["per_class"])),
                        (["info", tmp_path / "run", "--json"], lambda d: d["classes"]),
                        (["predict", "--checkpoint", tmp_path / "run", root / os.fsdecode(b"d\xffisc"), "--json"],
                         lambda d: [r["class"] for r in d] + [r["path"] for r in d])):
        res = invoke(*args)
        assert res.exit_code == 0, (args, res.output)
        res.stdout.encode("utf-8")                                   # no lone surrogate anywhere
        assert any("d\\xffisc" in n for n in names(json.loads(res.stdout))), (args, res.output)


def _claim(out):
    return str(runfolder.new_run_dir(out))


def test_simultaneous_runs_never_share_a_run_folder(tmp_path):
    out = str(tmp_path / "runs" / "same")
    with ProcessPoolExecutor(4) as pool:
        got = list(pool.map(_claim, [out] * 16))
    assert len(set(got)) == 16, got


def test_a_run_folder_that_cannot_be_made_is_one_line_naming_it(tmp_path, monkeypatch):
    def refuse(path, *a, **k):                  # a read-only parent (root writes anywhere, so simulated)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runfolder.os, "mkdir", refuse)
    with pytest.raises(CnnError) as err:
        runfolder.new_run_dir(str(tmp_path / "run"))
    assert str(err.value) == f"{tmp_path / 'run'}: cannot create the run folder (permission denied: write where " \
        "you may, or change the folder's permissions)"


def test_resume_cleans_stray_temporary_files(run1):
    stray = run1 / ".last.npz.tmp-99999-abcd1234"
    stray.write_bytes(b"half a checkpoint")
    assert invoke("train", "--resume", run1, "--set", "train.epochs=2", "-q", "--no-report").exit_code == 0
    assert not stray.exists()


def test_non_finite_checkpoint_is_refused_in_one_line(run1):
    arrays, meta = checkpoint.load(run1 / "last.npz")
    arrays["params/fc1.w"][3, 4] = np.nan
    checkpoint.save(run1 / "last.npz", arrays, meta)
    for args in (["eval", "--checkpoint", run1 / "last.npz", "--data", run1],
                 ["train", "--resume", run1, "--set", "train.epochs=2", "-q", "--no-report"]):
        res = invoke(*args)
        assert res.exit_code == 1, res.output
        assert "'params/fc1.w'" in res.output and "non-finite" in res.output and "Traceback" not in res.output


def test_train_top_k_is_honored_by_eval_and_report(data, tmp_path):
    train(write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1), "--set", "train.top_k=2")
    res = invoke("eval", "--checkpoint", tmp_path / "run", "--data", data, "--json")
    assert json.loads(res.output)["top_k"] == 2
    res = invoke("eval", "--checkpoint", tmp_path / "run", "--data", data, "--top-k", "1")
    assert "top-1 accuracy" in res.output and "top-2" not in res.output
    if pytest.importorskip("matplotlib"):
        assert invoke("report", tmp_path / "run").exit_code == 0
        assert "top-2 accuracy" in (tmp_path / "run" / "report" / "report.html").read_text()


def test_a_resume_with_nothing_to_do_keeps_the_report_it_has(data, tmp_path):
    pytest.importorskip("matplotlib")
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    assert invoke("train", "--config", cfg, "-q").exit_code == 0
    html = tmp_path / "run" / "report" / "report.html"
    drawn = html.stat().st_mtime_ns
    res = invoke("train", "--resume", tmp_path / "run", "-q")
    assert res.exit_code == 0 and "Nothing to do" in res.output, res.output
    assert f"Report: {html} (up to date)" in res.output and html.stat().st_mtime_ns == drawn
    res = invoke("train", "--resume", tmp_path / "run", "-q", "--set", "train.epochs=2")
    assert res.exit_code == 0 and "up to date" not in res.output and html.stat().st_mtime_ns > drawn


def test_resume_out_into_another_run_is_refused_and_a_symlinked_checkpoint_continues_its_own_run(data, run1,
                                                                                                tmp_path):
    other = tmp_path / "other"
    train(write_config(tmp_path / "o.yaml", data, other, epochs=1), "--set", "train.seed=7")
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    res = invoke("train", "--resume", run1, "--out", other, "-q", "--no-report", "--set", "train.epochs=2")
    assert res.exit_code == 2 and res.output.strip() == (
        f"Error: --out {other}: holds another run; --resume --out continues this run in a new or empty folder "
        f"(or give --resume {other} to go on with that one)")
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before   # untouched
    links = tmp_path / "links"
    links.mkdir()
    (links / "ck.npz").symlink_to(run1 / "last.npz")
    res = invoke("train", "--resume", links / "ck.npz", "-q", "--no-report", "--set", "train.epochs=2")
    assert res.exit_code == 0 and f"Run folder: {run1}" in res.output
    assert [r["epoch"] for r in rows(run1)] == ["1", "2"] and os.listdir(links) == ["ck.npz"]


def test_only_the_writing_rank_refuses_an_out_folder_for_holding_a_run(data, run1, tmp_path):
    # under MPI rank 0 checks --out and then carries best.npz into it while the other ranks check
    # the config: a rank that looked at --out then found a "run" there (the carried best.npz) and
    # failed the whole job, leaving a folder with a lone best.npz that every retry refused
    from cnncli import runsetup
    from cnncli.errors import ConfigError
    from cnncli.resume import resumed_config

    cfg = resumed_config(run1, ["train.epochs=2"])
    new = tmp_path / "new"
    new.mkdir()
    (new / "best.npz").write_bytes((run1 / "best.npz").read_bytes())      # rank 0 got there first
    *_, run_dir, _, _, done = runsetup._open_resume(run1, cfg, new, write=False)
    assert run_dir == new and done is None
    with pytest.raises(ConfigError, match="holds another run"):
        runsetup._open_resume(run1, cfg, new, write=True)


def test_a_run_cannot_be_resumed_while_another_process_trains_it(data, tmp_path):
    # two processes training one folder wrote each other's checkpoints, metrics and config.yaml, and
    # both said where their best.npz was
    import signal
    import subprocess
    import sys
    import time

    from e2e_util import cli_env, run_cli

    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=400, checkpoint_every=1)
    first = subprocess.Popen([sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "-q", "--no-report"],
                             env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (run / "last.npz").exists() and first.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.01)
    second = run_cli(["train", "--resume", run, "-q", "--no-report"], tmp_path)
    alive = first.poll() is None
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert alive and first.returncode == 130, err
    assert second.returncode == 1 and second.stderr.strip() == (
        f"Error: {run}: another cnn process (pid {first.pid}) is training this run now; let it finish, or stop it "
        f"(Ctrl-C in its terminal, or kill -TERM {first.pid}: it saves) and resume then"), second.stderr
    more = int(checkpoint.load_meta(run / "last.npz")["epoch"]) + 1
    res = invoke("train", "--resume", run, "-q", "--no-report", "--set", f"train.epochs={more}")   # free again
    assert res.exit_code == 0 and "Nothing to do" not in res.output, res.output


def test_a_run_stopped_after_an_epochs_last_step_resumes_without_a_rate_of_zero_images(data, tmp_path, monkeypatch):
    # the stop came after epoch 1's last step, before its end: the resumed run only validates and
    # saves epoch 1, and its line said "(0 img/s)"
    import signal

    from cnncli.trainer import Trainer

    real = Trainer.train_step

    def step(self, idx):
        real(self, idx)
        if self.state.epoch == 0 and self.state.epoch_step == self.steps_per_epoch:
            signal.raise_signal(signal.SIGINT)                     # (the run's StopFlag takes it)
    monkeypatch.setattr(Trainer, "train_step", step)
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=2)
    res = invoke("train", "--config", cfg, "--no-report")
    assert res.exit_code == 130 and "stopped at epoch 1, step" in res.output, res.output
    monkeypatch.setattr(Trainer, "train_step", real)
    res = invoke("train", "--resume", tmp_path / "run", "--no-report")
    assert res.exit_code == 0, res.output
    [line] = [ln for ln in res.output.splitlines() if ln.startswith("epoch 1/2")]
    assert line.endswith("(resumed after its last step)") or "(resumed after its last step)  *best" in line, line
    assert "(0 img/s)" not in res.output           # (not "5890 img/s", another epoch's rate)


def test_a_resumed_run_names_its_folder_as_the_user_wrote_it(data, tmp_path, monkeypatch):
    # a new run printed runs/x, its resume /the/whole/path/runs/x
    monkeypatch.chdir(tmp_path)
    train(write_config(tmp_path / "c.yaml", data, "runs/x", epochs=1))
    res = invoke("train", "--resume", "runs/x", "--set", "train.epochs=2", "-q", "--no-report")
    assert res.exit_code == 0, res.output
    assert res.stdout == "runs/x\n" and "Run folder: runs/x\n" in res.stderr, res.output
    assert checkpoint.load_meta(tmp_path / "runs" / "x" / "last.npz")["epoch"] == 2


def test_resume_with_out_naming_the_same_folder_in_another_spelling(data, tmp_path, monkeypatch):
    # --resume runs/x --out runs/x (or one of them absolute) was refused as 'holds another run' once
    # the resumed folder kept the user's spelling
    monkeypatch.chdir(tmp_path)
    train(write_config(tmp_path / "c.yaml", data, "runs/x", epochs=1))
    for out in ("runs/x", tmp_path / "runs" / "x"):
        res = invoke("train", "--resume", "runs/x", "--out", out, "--set", "train.epochs=2", "-q", "--no-report")
        assert res.exit_code == 0, res.output
    assert checkpoint.load_meta(tmp_path / "runs" / "x" / "last.npz")["epoch"] == 2


def test_a_resume_names_the_settings_it_changes(run1):
    # (a resume with augmentation switched off said nothing, and cnn info then called the whole run's recipe
    # 'augmentation off'; a helper's augmentation pass)
    res = invoke("train", "--resume", run1, "--set", "train.epochs=2", "--set", "augment.enabled=false",
                 "--set", "optim.lr=0.0001", "-q", "--no-report")
    assert res.exit_code == 0, res.output
    assert "note: this resume changes optim.lr 0.003 -> 0.0001, train.epochs 1 -> 2, augment.enabled true -> false " \
           "(for the steps from here on)" in res.stderr, res.stderr
    res = invoke("train", "--resume", run1, "--set", "train.epochs=3", "-q", "--no-report")
    assert res.exit_code == 0 and "this resume changes train.epochs 2 -> 3 (" in res.stderr, res.stderr


def test_a_run_resumed_into_another_folder_names_the_checkpoints_it_continues(data, run1, tmp_path):
    # cnn info and cnn runs said nothing of the run a --resume --out folder continues
    b, c = tmp_path / "b", tmp_path / "c"
    train_args = ("-q", "--no-report")
    assert invoke("train", "--resume", run1, "--out", b, "--set", "train.epochs=2", *train_args).exit_code == 0
    assert invoke("train", "--resume", b, "--out", c, "--set", "train.epochs=3", *train_args).exit_code == 0
    assert invoke("train", "--resume", c, "--set", "train.epochs=4", *train_args).exit_code == 0   # (in place)
    steps = int(checkpoint.load_meta(run1 / "last.npz")["step"])
    info = json.loads(invoke("info", c, "--json").output)
    assert info["training"]["came_from"] == [
        {"checkpoint": str(run1 / "last.npz"), "epoch": 1, "step": steps},
        {"checkpoint": str(b / "last.npz"), "epoch": 2, "step": 2 * steps}]
    text = invoke("info", c).output
    assert f"resumed     from {b / 'last.npz'} at epoch 2 (step {2 * steps})\n" \
           f"            before that from {run1 / 'last.npz'} at epoch 1 (step {steps})\n" in text, text
    assert "\nresumed " not in invoke("info", run1).output
    by_run = {r["run"]: r for r in json.loads(invoke("runs", tmp_path, "--json").output)}
    assert by_run[str(c)]["resumed_from"] == str(b / "last.npz") and by_run[str(run1)]["resumed_from"] is None
    table = invoke("runs", tmp_path).output
    assert [line.split()[-1] for line in table.splitlines() if line.startswith(str(c))] == [str(b / "last.npz")]


def test_a_run_validating_on_data_val_keeps_it_or_moves_it_but_never_splits_data_train(data, tmp_path):
    # --set data.val=null on resume validated on a split of images the run had trained on (val acc 100%,
    # best.npz replaced), under a note blaming a changed data folder; data.val_split was refused though unused
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    train(cfg, "--set", f"data.val={data}")
    run = tmp_path / "run"
    res = invoke("train", "--resume", run, "--set", "data.val=null", "--set", "train.epochs=2", "-q", "--no-report")
    assert res.exit_code == 2 and "data.val cannot change on --resume between a folder and none" in res.output
    res = invoke("train", "--resume", run, "--set", "data.val_split=0.3", "--set", "train.epochs=2", "--no-report")
    assert res.exit_code == 0 and "validation images differ" not in res.output, res.output
    nothing = tmp_path / "nothing"                 # (a run that held nothing out may be given a validation folder)
    train(write_config(tmp_path / "n.yaml", data, nothing, epochs=1), "--set", "data.val_split=0")
    res = invoke("train", "--resume", nothing, "--set", f"data.val={data}", "--set", "train.epochs=2", "--no-report")
    assert res.exit_code == 0 and "this resume changes data.val null -> " in res.output, res.output
    assert "note: data.val now names validation images, where the run had none: best.npz and early stopping " \
           "start anew" in res.output                  # (it compared epoch 2's val loss with epoch 1's train loss)
    assert "validation images differ" not in res.output          # (a note that contradicted it)
    assert rows(nothing)[-1]["val_loss"] != "nan" and checkpoint.load_meta(nothing / "best.npz")["epoch"] == 2
    other = make_folder(tmp_path / "other", per_class=3, odd_files=False)
    res = invoke("train", "--resume", run, "--set", f"data.val={other}", "--set", "train.epochs=3", "--no-report")
    assert res.exit_code == 0 and "note: the validation images differ from those the run used" in res.output
    assert "data.val holds other images now" in res.output and "data folder changed" not in res.output


def test_a_new_run_beside_an_unfinished_one_says_how_to_resume_it(data, tmp_path):
    # "Run folder: runs/lock-2 (runs/lock holds another run)": nothing said the stopped run could go on
    from cnncli import config, model, optim
    from cnncli.runfolder import RunState, save_checkpoint

    run = tmp_path / "run"
    cfg = config.load_config(None, [f"data.train={data}", "train.epochs=9"])
    net = model.Network(num_classes=3, seed=0)
    save_checkpoint(run / "last.npz", net, optim.Optimizer("adam", net.params.flat.size, 1e-3),
                    RunState(epoch=2, step=6), cfg, ["bar", "column", "disc"], {"image_size": 32, "resize": "pad",
                                                                              "mean": 0.0, "std": 1.0})
    res = train(write_config(tmp_path / "c.yaml", data, run, epochs=1))
    assert f"Run folder: {run}-2 ({run} holds another run; cnn train --resume {run} continues it)\n" in res.output
    assert (run / "last.npz").is_file() and not (run / "metrics.csv").exists()     # (untouched)


def test_out_set_on_a_resume_is_said_not_to_move_the_run(run1, tmp_path):
    # --set out=DIR on --resume was dropped without a word (only --out moves a run)
    moved = tmp_path / "moved"
    res = invoke("train", "--resume", run1, "--set", f"out={moved}", "--set", "train.epochs=2", "--no-report")
    assert res.exit_code == 0 and not moved.exists()
    assert f"note: out={moved} does not move a resumed run: it continues in {run1} (--out DIR continues it in " \
           "another folder)\n" in res.output
    res = invoke("train", "--resume", run1, "--set", "train.epochs=3", "--no-report")
    assert res.exit_code == 0 and "does not move" not in res.output


def test_a_resume_never_writes_into_a_users_folder(data, run1, tmp_path):
    # (--resume models/shape_model.npz made models/ the run folder: the user's config.yaml, metrics.csv and
    # another model's best.npz were overwritten; --resume --out into a folder of the user's files did the same)
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(run1 / "best.npz", models / "shape_model.npz")
    (models / "config.yaml").write_text("# my notes\n")
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    res = invoke("train", "--resume", models / "shape_model.npz", "--set", "train.epochs=2", "-q", "--no-report")
    assert res.exit_code == 2 and "lies in a folder that is not its run's" in res.output, res.output
    other = tmp_path / "other"                           # (another run's best.npz beside it)
    train(write_config(tmp_path / "o.yaml", data, other, epochs=1), "--set", "train.seed=7")
    shutil.copy(run1 / "best.npz", models / "best.npz")
    shutil.copy(other / "best.npz", models / "best.npz")
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    res = invoke("train", "--resume", models / "shape_model.npz", "--set", "train.epochs=2", "-q", "--no-report")
    assert res.exit_code == 2 and {p.name: p.read_bytes() for p in models.iterdir()} == before
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    res = invoke("train", "--resume", run1, "--out", user, "--set", "train.epochs=2", "-q", "--no-report")
    assert res.exit_code == 2 and f"--out {user}: holds files that are no run's (thesis.tex)" in res.output
    assert os.listdir(user) == ["thesis.tex"]
    res = invoke("train", "--resume", models / "shape_model.npz", "--out", tmp_path / "new", "--set",
                 "train.epochs=2", "-q", "--no-report")                   # (--out: a new folder, as the line says)
    assert res.exit_code == 0 and (tmp_path / "new" / "last.npz").is_file()


def test_a_finished_runs_checkpoint_copied_out_of_its_run_is_no_error_after_nothing_to_do(data, run1, tmp_path):
    # (--resume models/model.npz of a finished run, whose config names data.test: 'Nothing to do', then
    # 'Error: models: run folder has no best.npz or last.npz' from the test of a folder that is no run's)
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(run1 / "best.npz", models / "model.npz")
    res = invoke("train", "--resume", models / "model.npz", "--set", f"data.test={data}", "-q")
    assert res.exit_code == 2 and "lies in a folder that is not its run's" in res.output, res.output
    assert "Nothing to do" not in res.output and os.listdir(models) == ["model.npz"]
    res = invoke("train", "--resume", models / "model.npz", "--set", f"data.test={data}", "--out",
                 tmp_path / "new", "-q")
    ck = models / "model.npz"       # (the test is not run, and one line says why and what runs it)
    assert res.exit_code == 0 and res.output == "Nothing to do: the run already completed 1 epoch(s) (raise " \
        f"train.epochs to continue).\nnote: data.test is not tested: {ck} lies outside its run folder and nothing " \
        f"is trained, so no run folder holds the result; cnn eval --checkpoint {ck} --data {data} tests it\n", \
        res.output
    assert os.listdir(models) == ["model.npz"] and not (tmp_path / "new").exists()
    res = invoke("eval", "--checkpoint", ck, "--data", data)
    assert res.exit_code == 0 and "accuracy" in res.output, res.output


def test_the_out_refusal_of_a_finished_runs_lone_checkpoint_says_that_out_alone_trains_nothing(data, run1, tmp_path):
    # (it said 'give --out NEWDIR to continue its run in a new folder', and that command then said 'Nothing to do')
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copy(run1 / "best.npz", tmp_path / "models" / "model.npz")
    res = invoke("train", "--resume", tmp_path / "models" / "model.npz", "-q")
    assert res.exit_code == 2 and res.output.rstrip().endswith(
        "give --out NEWDIR to continue its run in a new folder, and raise train.epochs: the run already "
        "completed 1 epoch(s)"), res.output


def test_an_empty_folder_the_user_made_stays_when_the_run_fails_in_set_up(data, tmp_path):
    # (mkdir myrun; cnn train --out myrun with a bad class_weight: myrun was removed with the run's marker)
    mine, made = tmp_path / "myrun", tmp_path / "made"
    mine.mkdir()
    for out in (mine, made):
        res = invoke("train", "--config", write_config(tmp_path / "c.yaml", data, out, epochs=1), "--set",
                     "train.class_weight={zzz: 2}", "-q", "--no-report")
        assert res.exit_code == 2 and "zzz" in res.output, res.output
    assert mine.is_dir() and os.listdir(mine) == [] and not made.exists()    # (the one cnn made goes back)
