"""End to end through the real CLI: train, eval, predict, resume, config errors, determinism."""

from __future__ import annotations

import csv
import os
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnncli.cli import cli
from e2e_util import SHAPES, cli_env, invoke, load_params, make_folder, private_cache, run_cli, write_config  # noqa: F401


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = make_folder(tmp / "data")
    write_config(tmp / "cfg.yaml", data, tmp / "run", epochs=2)
    return tmp, data


@pytest.fixture(scope="module")
def trained(workspace):
    tmp, data = workspace
    cfg = tmp / "cfg.yaml"
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--quiet", "--no-report"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp, data, tmp / "run", res


def test_train_writes_a_complete_run_folder(trained):
    tmp, data, run, res = trained
    for name in ("config.yaml", "metrics.csv", "last.npz", "best.npz", "skipped.txt"):
        assert (run / name).is_file(), name
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].split(",") == ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s"]
    assert len(rows) == 3
    skipped = (run / "skipped.txt").read_text()
    assert "broken.png" in skipped and "empty.jpg" in skipped and ".DS_Store" not in skipped
    assert "epoch 2/2" in res.output
    n_params = sum(a.size for k, a in load_params(run / "last.npz").items() if k.startswith("params/"))
    assert f"batchnorm=none ({n_params:,} parameters)," in res.output


def test_eval_json_and_table(trained):
    tmp, data, run, _ = trained
    res = invoke(["eval", "--checkpoint", run / "best.npz", "--data", data, "--json"])
    assert res.exit_code == 0
    m = json.loads(res.stdout)
    assert set(m["per_class"]) == set(SHAPES)
    assert 0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0
    conf = np.array(m["confusion"])
    assert conf.shape == (3, 3) and conf.sum() == m["num_images"]
    assert m["accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
    table = invoke(["eval", "--checkpoint", run, "--data", data])
    assert table.exit_code == 0 and "disc" in table.stdout


def test_eval_without_data_measures_the_runs_own_validation_images(trained, tmp_path):
    tmp, data, run, res = trained
    held_out = int(res.output.split("validating on ")[1].split(";")[0])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    best = min(rows, key=lambda r: float(r["val_loss"]))           # the epoch best.npz holds
    for ckpt in (run, run / "best.npz"):
        out = invoke(["eval", "--checkpoint", ckpt, "--json"])
        assert out.exit_code == 0, out.stderr
        m = json.loads(out.stdout)
        assert m["num_images"] == held_out and "validation split" in m["data"]
        assert m["accuracy"] == pytest.approx(float(best["val_acc"]))
        assert m["loss"] == pytest.approx(float(best["val_loss"]), rel=1e-5)
    lone = tmp_path / "lone.npz"                                   # no run folder around it
    lone.write_bytes((run / "best.npz").read_bytes())
    out = invoke(["eval", "--checkpoint", lone])
    assert out.exit_code == 1 and "config.yaml: not found; pass --data" in out.stderr
    whole = tmp_path / "whole"                                     # a run that held out nothing
    assert invoke(["train", "--config", tmp / "cfg.yaml", "--out", whole, "-q", "--no-report",
                   "--set", "data.val_split=0", "--set", "train.epochs=1"]).exit_code == 0
    out = invoke(["eval", "--checkpoint", whole])
    assert out.exit_code == 1 and "held out no validation images" in out.stderr and "--data" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_eval_and_resume_say_when_the_validation_images_are_not_the_runs_any_more(workspace, tmp_path):
    tmp, _ = workspace
    data = make_folder(tmp_path / "data", odd_files=False)
    run = tmp_path / "run"
    common = ["-q", "--no-report", "--set", "train.epochs=1"]
    assert invoke(["train", "--config", tmp / "cfg.yaml", "--out", run, "--set", f"data.train={data}",
                   *common]).exit_code == 0
    out = invoke(["eval", "--checkpoint", run / "last.npz", "--json"])
    assert out.exit_code == 0 and out.stderr == "" and json.loads(out.stdout)["warnings"] == []
    for name in SHAPES:                                            # new images: the split drawn again differs
        for src in sorted((data / name).glob("00[0-2].png")):
            (data / name / f"new-{src.name}").write_bytes(src.read_bytes())
    out = invoke(["eval", "--checkpoint", run / "last.npz", "--json"])
    assert out.exit_code == 0 and len(json.loads(out.stdout)["warnings"]) == 1
    assert out.stderr.startswith(f"note: the dataset cache of {data} is out of date (a file was added, removed "
                                 "or changed since, or had its time or permissions changed): decoding the 9 new or "
                                 "changed file(s), the other 36 from the cache\n"
                                 "warning: the validation images differ from those the run used (9 then, 12 now)")
    assert len(out.stderr.strip().splitlines()) == 2
    (run / "last.npz").rename(run / "early.npz")
    res = invoke(["train", "--resume", run / "early.npz", *common[:2], "--set", "train.epochs=2"])
    assert res.exit_code == 0 and "note: the validation images differ" in res.stderr
    assert "behind" not in res.stderr                              # no last.npz ahead of early.npz
    out = invoke(["eval", "--checkpoint", run / "last.npz"])       # it records the split it validated on
    assert out.exit_code == 0 and "differ" not in out.stderr
    res = invoke(["train", "--resume", run / "early.npz", *common[:2], "--set", "train.epochs=2"])
    assert res.exit_code == 0
    assert f"note: {run / 'early.npz'} is at epoch 1 (step " in res.stderr and "behind" in res.stderr


def test_eval_names_the_files_it_skipped(trained):
    tmp, data, run, _ = trained
    out = invoke(["eval", "--checkpoint", run, "--data", data, "--json"])
    m = json.loads(out.stdout)
    assert out.exit_code == 0 and m["skipped"] == 2 == len(m["skipped_files"])
    assert "warning: skipped 2 unusable file(s):" in out.stderr
    assert "broken.png" in out.stderr and "empty.jpg" in out.stderr


def test_eval_without_data_of_a_run_with_data_val_reads_that_folder_alone(workspace, tmp_path):
    tmp, data = workspace                                          # data holds broken.png and empty.jpg
    val = make_folder(tmp_path / "val", odd_files=False)
    run = tmp_path / "run"
    assert invoke(["train", "--config", tmp / "cfg.yaml", "--out", run, "-q", "--no-report",
                   "--set", f"data.val={val}", "--set", "train.epochs=1"]).exit_code == 0
    own, given = (invoke(["eval", "--checkpoint", run, "--json", *more]) for more in ([], ["--data", val]))
    assert own.exit_code == 0 == given.exit_code and own.stderr == ""
    m, g = json.loads(own.stdout), json.loads(given.stdout)
    assert m["skipped"] == 0 and m["skipped_files"] == [] and "data.val of" in m["data"]
    assert (m["num_images"], m["accuracy"], m["loss"]) == (g["num_images"], g["accuracy"], g["loss"])


def test_a_validation_folder_without_some_classes_trains_and_says_so(workspace, tmp_path):
    tmp, data = workspace
    val = tmp_path / "val"
    for name in SHAPES[1:]:                                        # no SHAPES[0] folder
        (val / name).mkdir(parents=True)
        for src in sorted((data / name).glob("00[0-2].png")):
            (val / name / src.name).write_bytes(src.read_bytes())
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run", "--no-report",
                  "--set", f"data.val={val}", "--set", "train.epochs=1"])
    assert res.exit_code == 0, res.stderr
    assert "validating on 6;" in res.stderr and f"note: no validation images of {SHAPES[0]}\n" in res.stderr
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    m = json.loads(invoke(["eval", "--checkpoint", tmp_path / "run" / "last.npz", "--json"]).stdout)
    assert m["num_images"] == 6 and m["absent"] == [SHAPES[0]]
    assert m["accuracy"] == pytest.approx(float(rows[-1]["val_acc"]))


def test_a_validation_folder_of_other_classes_is_named_as_data_val(workspace, tmp_path):
    tmp, data = workspace
    val = tmp_path / "val"
    for k in range(25):                             # 25 classes the model does not have: 20 named
        (val / f"c{k:02d}").mkdir(parents=True)
        shutil.copy(data / SHAPES[0] / "001.png", val / f"c{k:02d}")
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run", "--no-report",
                  "--set", f"data.val={val}", "--set", "train.epochs=1"])
    assert res.exit_code == 1 and res.stdout == "" and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"Error: data.val: data folder {val}: class folder(s) c00, c01, ")
    assert ", c19, ... (25 in all) not among the expected classes (" in res.stderr and "c20" not in res.stderr


def test_classes_of_very_different_sizes_get_a_note_on_class_weights(workspace, tmp_path):
    tmp, data = workspace
    uneven = tmp_path / "uneven"
    for k, name in enumerate(SHAPES):
        (uneven / name).mkdir(parents=True)
        for i in range(2 if k == 0 else 21):             # 2 against 21: more than 10x
            shutil.copy(sorted((data / name).glob("*.png"))[i % 10], uneven / name / f"{i:03d}.png")
    common = ["train", "--config", tmp / "cfg.yaml", "--no-report", "--set", f"data.train={uneven}",
              "--set", "data.val_split=0", "--set", "train.epochs=1"]
    res = invoke([*common, "--out", tmp_path / "a"])
    assert res.exit_code == 0, res.stderr
    assert f"note: the classes are far from even ({SHAPES[0]}: 2 training image(s), {SHAPES[1]}: 21); " \
        "train.class_weight: balanced weights each image's loss by its class's rarity\n" in res.stderr
    res = invoke([*common, "--out", tmp_path / "b", "--set", "train.class_weight=balanced"])
    assert res.exit_code == 0 and "far from even" not in res.stderr


def test_images_of_one_grey_level_are_used_and_named_in_one_warning(workspace, tmp_path):
    tmp, data = workspace
    shutil.copytree(data, tmp_path / "data")
    Image.new("L", (32, 32), 255).save(tmp_path / "data" / SHAPES[1] / "blank.png")
    line = f"warning: 1 image(s) decode to a single grey level, e.g. {tmp_path / 'data' / SHAPES[1] / 'blank.png'}\n"
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run", "--no-report",
                  "--set", f"data.train={tmp_path / 'data'}", "--set", "train.epochs=1"])
    assert res.exit_code == 0 and res.stderr.count(line) == 1, res.stderr
    res = invoke(["eval", "--checkpoint", tmp_path / "run", "--data", tmp_path / "data", "--json"])
    m = json.loads(res.stdout)
    assert res.exit_code == 0 and res.stderr.startswith(line) and res.stderr.count("single grey level") == 1
    assert m["num_images"] == 37 and m["warnings"] == [line.removeprefix("warning: ").strip()]


def test_predict_files_folders_json_and_a_bad_file(trained):
    tmp, data, run, _ = trained
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(run), str(data / "disc"), "--json", "--top-k", "2"])
    out = json.loads(res.stdout)
    assert res.exit_code == 1  # disc/empty.jpg is broken: reported, the others still predicted
    assert "empty.jpg" in res.stderr
    good, failed = out[:-1], out[-1]                               # the failed file last, with its reason
    assert failed["path"].endswith("empty.jpg") and failed.keys() == {"path", "error"} and failed["error"] in res.stderr
    assert len(good) == 12 and all(r["class"] in SHAPES and len(r["top_k"]) == 2 for r in good)
    assert all(0.0 <= r["probability"] <= 1.0 for r in good)
    one = invoke(["predict", "--checkpoint", run / "best.npz", data / "bar" / "001.png"])
    assert one.exit_code == 0
    path, cls, prob = one.stdout.strip().split("\t")[:3]
    assert path.endswith("001.png") and cls in SHAPES and 0 <= float(prob) <= 1


def test_eval_and_export_take_the_checkpoint_as_an_argument_as_predict_does(trained, tmp_path):
    tmp, data, run, _ = trained
    by_option = invoke(["eval", "--checkpoint", run, "--data", data, "--json"])
    by_argument = invoke(["eval", run, "--data", data, "--json"])            # cnn eval runs/x --data ...
    assert by_argument.exit_code == 0
    assert (by_argument.stdout, by_argument.stderr) == (by_option.stdout, by_option.stderr)
    two = invoke(["eval", run, "--checkpoint", run / "last.npz", "--data", data, "--json"])   # an ensemble
    assert two.exit_code == 0 and len(json.loads(two.stdout)["checkpoint"]) == 2
    same = invoke(["eval", run, "--checkpoint", run / "best.npz", "--data", data, "--json"])  # (one model twice)
    assert same.exit_code == 1 and "given twice" in same.stderr
    both = invoke(["export", run, "--checkpoint", run, "-o", tmp_path / "m.onnx"])
    assert both.exit_code == 2 and "export writes one model" in both.stderr and not (tmp_path / "m.onnx").exists()
    pytest.importorskip("onnx")
    res = invoke(["export", run, "-o", tmp_path / "m.onnx"])                 # cnn export runs/x -o m.onnx
    assert res.exit_code == 0 and res.stderr == "" and (tmp_path / "m.onnx").is_file()


def test_predict_of_a_folder_without_images_fails(trained, tmp_path):
    tmp, data, run, _ = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes" / "sub").mkdir(parents=True)
    (tmp_path / "notes" / "sub" / "a.txt").write_text("x")
    res = invoke(["predict", "--checkpoint", run, tmp_path / "empty", tmp_path / "notes", data / "bar" / "001.png"])
    assert res.exit_code == 1 and res.stdout.count("\n") == 1 and "001.png" in res.stdout
    assert f"error: {tmp_path / 'empty'}: no images found\n" in res.stderr
    assert f"error: {tmp_path / 'notes'}: no images found\n" in res.stderr
    assert res.stderr.endswith("2 of 3 could not be classified\n")      # the count after the list
    (tmp_path / "broken.png").write_bytes(b"junk")
    (tmp_path / "empty.png").write_bytes(b"")
    res = invoke(["predict", "--checkpoint", run, tmp_path / "broken.png", tmp_path / "empty.png", data / "bar",
                  "--json"])
    assert res.exit_code == 1 and res.stderr.endswith(
        f"2 of {len(json.loads(res.stdout))} could not be classified (each also in the JSON, with its error)\n")


def test_same_config_and_seed_give_bitwise_identical_checkpoints(trained):
    tmp, data, run, _ = trained
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--quiet", "--no-report", "--out", tmp / "again"])
    assert res.exit_code == 0
    a, b = load_params(run / "last.npz"), load_params(tmp / "again" / "last.npz")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_resume_from_finished_epoch_equals_longer_run(workspace, tmp_path):
    tmp, data = workspace
    cfg3 = write_config(tmp_path / "c3.yaml", data, tmp_path / "full", epochs=3)
    assert invoke(["train", "--config", cfg3, "-q", "--no-report"]).exit_code == 0
    cfg1 = write_config(tmp_path / "c1.yaml", data, tmp_path / "part", epochs=1)
    assert invoke(["train", "--config", cfg1, "-q", "--no-report"]).exit_code == 0
    res = invoke(["train", "--resume", tmp_path / "part", "--set", "train.epochs=3", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    a, b = load_params(tmp_path / "full" / "last.npz"), load_params(tmp_path / "part" / "last.npz")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert (tmp_path / "full" / "metrics.csv").read_text().count("\n") == 4
    assert len((tmp_path / "part" / "metrics.csv").read_text().strip().splitlines()) == 4


def test_new_run_never_overwrites_an_old_one(trained):
    tmp, data, run, _ = trained
    res = invoke(["train", "--config", tmp / "cfg.yaml", "-q", "--no-report", "--set", "train.epochs=1"])
    assert res.exit_code == 0
    assert res.stdout.strip().endswith("run-2") and f"Run folder: {run}-2 ({run} holds another run)\n" in res.stderr
    import os

    import yaml                                       # its config.yaml names the folder it got, absolute
    assert yaml.safe_load((tmp / f"{run.name}-2" / "config.yaml").read_text())["out"] == os.path.abspath(f"{run}-2")
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # untouched


def test_an_out_that_is_a_file_a_folder_of_other_files_or_unwritable_gets_one_accurate_line(trained, tmp_path,
                                                                                              monkeypatch):
    from cnncli import runfolder

    tmp, data, run, _ = trained
    common = ["train", "--config", tmp / "cfg.yaml", "-q", "--no-report", "--set", "train.epochs=1"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.md").write_text("keep")
    res = invoke([*common, "--out", tmp_path / "notes"])
    notes = tmp_path / "notes"
    assert res.exit_code == 0 and f"Run folder: {notes}-2 ({notes} is not empty)\n" in res.stderr
    (tmp_path / "afile").write_text("x")
    res = invoke([*common, "--set", f"out={tmp_path / 'afile'}"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / 'afile'}: is a file, not a run folder; " \
        "choose another `out`"
    res = invoke([*common, "--out", tmp_path / "afile"])           # the option: the same line, naming it
    assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / 'afile'}: is a file, not a run folder; " \
        "choose another --out"
    res = invoke(["cv", "--config", tmp / "cfg.yaml", "--folds", "2", "--out", tmp_path / "afile"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / 'afile'}: is a file, not a run folder; " \
        "choose another --out"
    assert not (tmp_path / "afile-2").exists()

    def read_only(folder):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(runfolder, "claim_marker", read_only)
    (tmp_path / "empty").mkdir()                                   # an empty folder the run cannot write
    res = invoke([*common, "--out", tmp_path / "empty"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / 'empty'}: cannot create the run folder " \
        "(the file system is read-only: write elsewhere)"


def test_resuming_into_a_folder_it_cannot_write_says_so_before_reading_data(trained, tmp_path, monkeypatch):
    from cnncli import runfolder

    tmp, data, run, _ = trained
    real_open = open

    def no_writes_in(folder):
        def guarded(path, mode="r", *args, **kwargs):
            if str(path).startswith(str(folder)) and ("x" in mode or "w" in mode):
                raise OSError(30, "Read-only file system")
            return real_open(path, mode, *args, **kwargs)
        return guarded
    monkeypatch.setattr(runfolder, "open", no_writes_in(run), raising=False)
    res = invoke(["train", "--resume", run, "--set", "train.epochs=3", "-q", "--no-report"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: {run}: cannot write the run folder (the file system " \
        "is read-only); --out NEWDIR continues the run in a new folder"
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # untouched


def test_print_config_shows_every_default(workspace):
    tmp, data = workspace
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--print-config", "--set", "optim.lr=0.5"])
    assert res.exit_code == 0
    assert "lr: 0.5" in res.stdout and "batchnorm: none" in res.stdout and "early_stopping" in res.stdout


def test_config_and_out_have_the_short_flags_users_type(workspace, tmp_path):
    tmp, data = workspace                                    # -c and -o, as most CLIs spell them
    res = invoke(["train", "-c", tmp / "cfg.yaml", "-o", tmp_path / "short", "--print-config"])
    assert res.exit_code == 0 and f"out: {tmp_path / 'short'}" in res.stdout
    for command in ("report", "export", "cv", "augment-preview"):
        help_text = invoke([command, "--help"]).stdout
        assert "-o, --out" in help_text and (command in ("report", "export") or "-c, --config" in help_text)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "optim.lrr=0.1"], "optim.lr"),
        (["--set", "train.batch_size=0"], "train.batch_size"),
        (["--set", "optim.lr=-1"], "optim.lr"),
        (["--set", "data.val_split=1.5"], "data.val_split"),
        (["--set", "model.batchnorm=batch"], "model.batchnorm"),
        (["--set", "train.epochs=0"], "train.epochs"),
        (["--set", "noequals"], "noequals"),
        (["--set", "model.batchnorm=channel", "--set", "train.batch_size=1", "-q"], "train.batch_size"),
    ],
)
def test_bad_settings_fail_in_one_line_with_exit_2(workspace, args, needle):
    tmp, data = workspace
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp / "cfg.yaml"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


def test_a_run_that_fails_before_its_first_save_gives_its_folder_name_back(workspace, tmp_path):
    tmp, _ = workspace
    run = tmp_path / "run"
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", run, "-q", "--no-report",
                  "--set", "train.class_weight={nosuchclass: 2}"])
    assert res.exit_code == 2 and "nosuchclass" in res.stderr
    assert not run.exists()                                        # not left holding the name
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", run, "-q", "--no-report", "--set", "train.epochs=1"])
    assert res.exit_code == 0 and f"Run folder: {run}\n" in res.stderr


def test_a_dataset_root_given_as_data_train_is_refused_before_decoding(workspace, tmp_path):
    tmp, data = workspace
    for split in ("train", "test"):                                # root/train/<class>, root/test/<class>
        for name in SHAPES[:2]:
            (tmp_path / "root" / split / name).mkdir(parents=True)
            for src in sorted((data / name).glob("00[0-3].png")):
                (tmp_path / "root" / split / name / src.name).write_bytes(src.read_bytes())
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run", "-q", "--no-report",
                  "--set", f"data.train={tmp_path / 'root'}", "--set", "train.epochs=1"])
    assert res.exit_code == 2 and not (tmp_path / "run").exists(), res.stderr
    assert res.stderr == (f"Error: data.train: the subfolders of {tmp_path / 'root'} are test, train, a dataset's "
                          f"splits rather than its classes; set data.train to {tmp_path / 'root' / 'train'} (and "
                          f"data.test to {tmp_path / 'root' / 'test'})\n")      # (a test split never picks best.npz)
    (tmp_path / "root" / "val").mkdir()
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run", "-q", "--no-report",
                  "--set", f"data.train={tmp_path / 'root'}", "--set", "train.epochs=1"])
    assert res.exit_code == 2 and res.stderr.endswith(f"(and data.val to {tmp_path / 'root' / 'val'} and data.test to "
                                                      f"{tmp_path / 'root' / 'test'})\n"), res.stderr
    (tmp_path / "root" / "val").rmdir()
    (tmp_path / "root" / "other").mkdir()                         # a class among them: warned, not refused
    for src in sorted((data / SHAPES[0]).glob("00[0-3].png")):
        (tmp_path / "root" / "other" / src.name).write_bytes(src.read_bytes())
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run", "-q", "--no-report",
                  "--set", f"data.train={tmp_path / 'root'}", "--set", "train.epochs=1"])
    assert res.exit_code == 0, res.stderr
    assert ("warning: the class folders include test, train: data.train should be the folder that holds one "
            f"subfolder per class (e.g. {tmp_path / 'root' / 'train'})") in res.stderr
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run2", "-q", "--no-report",
                  "--set", f"data.train={tmp_path / 'root' / 'train'}", "--set", "train.epochs=1"])
    assert res.exit_code == 0 and "warning" not in res.stderr
    (tmp_path / "root" / "train").rename(tmp_path / "classes")    # circle, square, other, and a test split among them
    (tmp_path / "root" / "test").rename(tmp_path / "classes" / "test")
    (tmp_path / "root" / "other").rename(tmp_path / "classes" / "other")
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run3", "-q", "--no-report",
                  "--set", f"data.train={tmp_path / 'classes'}", "--set", "train.epochs=1"])
    assert res.exit_code == 0, res.stderr
    assert ("warning: the class folder test is named like a held-out split: if it holds test or validation images "
            "rather than a class, move it out of data.train (data.test and data.val name such folders)") in res.stderr


def test_an_out_that_cannot_be_a_folder_is_one_line(workspace, tmp_path):
    tmp, _ = workspace
    (tmp_path / "afile").write_text("x")
    for out, code, needle in ((tmp_path / "afile" / "sub", 1, f"{tmp_path / 'afile'} is a file, not a folder"),
                              ("", 2, "--out: the path is empty"), ("  ", 2, "--out: the path is empty")):
        res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", out, "-q", "--no-report"])
        assert res.exit_code == code and needle in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_names_with_a_tab_or_a_newline_stay_on_their_line(workspace, tmp_path):
    tmp, data = workspace
    root = tmp_path / "data"
    for name, src in (("tab\there", SHAPES[0]), ("new\nline", SHAPES[1])):
        (root / name).mkdir(parents=True)
        for i, f in enumerate(sorted((data / src).glob("00[0-5].png"))):
            (root / name / (f"odd\n{i}.png" if i == 0 else f.name)).write_bytes(f.read_bytes())
    run = tmp_path / "run"
    assert invoke(["train", "--config", tmp / "cfg.yaml", "--out", run, "-q", "--no-report",
                   "--set", f"data.train={root}", "--set", "train.epochs=1"]).exit_code == 0
    res = invoke(["predict", "--checkpoint", run, root])
    lines = res.stdout.splitlines()
    images = sum(1 for f in root.rglob("*") if f.is_file())
    assert res.exit_code == 0 and len(lines) == images >= 8 and all(ln.count("\t") == 2 for ln in lines)
    assert sum("odd\\n0.png" in ln for ln in lines) == 2
    assert {ln.split("\t")[1] for ln in lines} <= {"tab\\there", "new\\nline"}
    # --json and --csv hold the names exactly (a file 'a\\nb.png' and a file 'a<newline>b.png' had one path there)
    (root / "tab\there" / "cr\r1.png").write_bytes((root / "tab\there" / "001.png").read_bytes())   # (a CR too)
    files = sorted(str(f) for f in root.rglob("*") if f.is_file())
    got = json.loads(invoke(["predict", "--checkpoint", run, root, "--json"]).stdout)
    assert sorted(r["path"] for r in got) == files and {r["class"] for r in got} <= {"tab\there", "new\nline"}
    import csv
    import io

    table = list(csv.reader(io.StringIO(invoke(["predict", "--checkpoint", run, root, "--csv", "-"]).stdout)))
    assert table[0][3:] == ["new\nline", "tab\there"] and sorted(row[0] for row in table[1:]) == files
    info = invoke(["info", run]).stdout
    assert "new\\nline, tab\\there" in info and "new\nline" not in info
    table = invoke(["eval", "--checkpoint", run, "--data", root]).stdout
    assert "new\\nline" in table and "new\nline" not in table


@pytest.mark.parametrize("rank, said", [("0", True), ("1", False), ("", True)])
def test_one_process_commands_run_on_rank_0_only_under_mpirun(trained, rank, said):
    tmp, data, run, _ = trained
    env = {"OMPI_COMM_WORLD_RANK": rank, "OMPI_COMM_WORLD_SIZE": "2"} if rank else {}
    res = CliRunner().invoke(cli, ["info", str(run)], env=env)
    assert res.exit_code == 0 and bool(res.stdout) == said, res.output


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: x\n optim: [\n")
    res = CliRunner().invoke(cli, ["train", "--config", str(bad)])
    assert res.exit_code == 2 and "bad.yaml" in res.stderr and ":3" in res.stderr


@pytest.mark.parametrize("command", [["train"], ["lr-find"], ["cv", "--folds", "2"], ["augment-preview"]])
def test_every_command_that_trains_asks_for_data_train_in_one_line(tmp_path, command):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 0.01\n")                   # a valid config that names no data
    res = CliRunner().invoke(cli, [*command, "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert "data.train is not set" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def test_missing_data_folder_is_one_line(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "nope", tmp_path / "run")
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "-q"])
    assert res.exit_code != 0 and "nope" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "run" / "last.npz").exists()


def test_eval_refuses_a_folder_with_other_classes(trained, tmp_path):
    tmp, data, run, _ = trained
    other = tmp_path / "other"
    for name in ("cat", "dog"):
        (other / name).mkdir(parents=True)
        make_one = (data / "bar" / "001.png").read_bytes()
        (other / name / "a.png").write_bytes(make_one)
    res = CliRunner().invoke(cli, ["eval", "--checkpoint", str(run), "--data", str(other)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "cat" in res.stderr or "dog" in res.stderr


def test_eval_of_a_folder_with_some_of_the_classes_labels_them_by_name(trained, tmp_path):
    # the folder holds the model's last two classes (the first has no folder, and an empty one is
    # as absent): its images keep the model's class indices, which a renumbering from 0 would break
    tmp, data, run, _ = trained
    part = tmp_path / "part"
    (part / SHAPES[0]).mkdir(parents=True)
    for name in SHAPES[1:]:
        (part / name).mkdir()
        for src in sorted((data / name).glob("00[0-4].png")):
            (part / name / src.name).write_bytes(src.read_bytes())
    for empty_first in (True, False):
        if not empty_first:
            (part / SHAPES[0]).rmdir()
        res = invoke(["eval", "--checkpoint", run, "--data", part, "--json"])
        assert res.exit_code == 0, res.stderr
        m = json.loads(res.stdout)
        pred = json.loads(invoke(["predict", "--checkpoint", run, part, "--json"]).stdout)
        truth = [r["path"].split("/")[-2] for r in pred]
        assert m["num_images"] == len(pred) == 10 and m["absent"] == [SHAPES[0]]
        assert m["accuracy"] == pytest.approx(np.mean([r["class"] == t for r, t in zip(pred, truth)]))
        assert [v["support"] for v in m["per_class"].values()] == [0, 5, 5]
        assert sum(m["confusion"][0]) == 0
    table = invoke(["eval", "--checkpoint", run, "--data", part])
    assert table.exit_code == 0 and f"no images of    {SHAPES[0]} (support 0" in table.stdout
    pytest.importorskip("matplotlib")
    rep = invoke(["report", run, "--data", part, "--out", tmp_path / "rep"])
    assert rep.exit_code == 0, rep.stderr
    assert f"<td>no images of</td><td>{SHAPES[0]}</td>" in (tmp_path / "rep" / "report.html").read_text()
    (part / "cat").mkdir()                          # a subfolder that is no class of the model: refused
    (part / "cat" / "a.png").write_bytes((data / "bar" / "001.png").read_bytes())
    res = invoke(["eval", "--checkpoint", run, "--data", part])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"class folder(s) cat not among the expected classes ({', '.join(SHAPES)})" in res.stderr
    shutil.move(part / "cat", part / SHAPES[1].upper())      # a class's name in other case, beside it: said so
    res = invoke(["eval", "--checkpoint", run, "--data", part])
    assert res.exit_code == 1 and res.stderr.rstrip().endswith(
        f"; {SHAPES[1].upper()} beside {SHAPES[1]}: class names match exactly, case too, so {SHAPES[1].upper()} is "
        f"no class: move its images into {SHAPES[1]} or out of the data folder"), res.stderr
    shutil.move(part / SHAPES[1], part / "elsewhere")          # without the class's own folder: rename it
    res = invoke(["eval", "--checkpoint", run, "--data", part])
    assert res.exit_code == 1 and res.stderr.rstrip().endswith(
        f"; {SHAPES[1].upper()} for {SHAPES[1]}: class names match exactly, case too: rename the folder"), res.stderr


def test_non_finite_loss_stops_with_epoch_and_step(workspace, tmp_path):
    tmp, data = workspace
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=3)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "-q", "--no-report", "--set", "optim.name=sgd",
                                   "--set", "optim.lr=1e30", "--set", "optim.warmup_epochs=2",
                                   "--set", "train.batch_size=4"])    # warmup: it diverges below optim.lr
    assert res.exit_code == 1, res.output
    assert "non-finite" in res.stderr and "epoch 1" in res.stderr and "step" in res.stderr
    import re                                  # the advice is below the rate it diverged at, not optim.lr/3
    at, advised = re.search(r"\(lr ([0-9.e+-]+)\);.*optim\.lr[= ](?:\(e\.g\. )?([0-9.e+-]+)", res.stderr).groups()
    assert float(advised) < float(at) <= 1e30, res.stderr


def test_non_finite_loss_prints_one_line_and_no_numpy_warnings(workspace, tmp_path):
    tmp, data = workspace
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=3)
    res = run_cli(["train", "--config", cfg, "-q", "--no-report", "--set", "optim.name=sgd",
                   "--set", "optim.lr=1e30"], tmp_path)
    assert res.returncode == 1
    assert "Warning" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert sum("non-finite" in ln for ln in res.stderr.splitlines()) == 1, res.stderr


@pytest.mark.parametrize("held_out", [True, False])
def test_weights_that_overflow_after_an_epoch_stop_the_run_before_its_checkpoint(workspace, tmp_path, monkeypatch,
                                                                                 held_out):
    # finite gradients and a huge step can leave weights whose outputs overflow: epoch 2's end
    # (here: an inf put in a weight as it is validated) stops the run, last.npz stays epoch 1's
    from cnncli import checkpoint, evaluate

    tmp, data = workspace
    real, calls = evaluate.evaluate_loss_acc, []

    def overflowing(net, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            net.params.flat[0] = np.inf
        return real(net, *args, **kw)

    monkeypatch.setattr(evaluate, "evaluate_loss_acc", overflowing)
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=3)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "-q", "--no-report",
                                   "--set", f"data.val_split={0.25 if held_out else 0}"])
    assert res.exit_code == 1, res.output
    what = "the validation loss became non-finite (nan): the weights overflow" if held_out else \
        "the weights became non-finite"
    assert res.stderr.splitlines()[-1].startswith(f"Error: {what} after epoch 2 (lr "), res.stderr
    assert f"the last good checkpoint is {tmp_path / 'run' / 'last.npz'}; resume it at a lower rate" in res.stderr
    meta = checkpoint.load_meta(tmp_path / "run" / "last.npz")
    assert meta["epoch"] == 1 and np.isfinite(load_params(tmp_path / "run" / "last.npz")["params/conv1.w"]).all()
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 2     # header + epoch 1


def test_python_dash_m_matches_cnn(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cnncli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "train" in res.stdout and "predict" in res.stdout
    commands = res.stdout.split("Commands:")[1]
    assert "train" in commands and "..." not in commands   # every command's summary whole, none cut short


def test_subprocess_user_error_has_no_traceback(tmp_path):
    res = run_cli(["eval", "--checkpoint", tmp_path / "missing.npz", "--data", tmp_path], tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "missing.npz" in res.stderr


def test_early_stopping_restores_best_into_last(workspace, tmp_path):
    tmp, data = workspace
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=5)
    res = invoke(["train", "--config", cfg, "-q", "--no-report", "--set", "train.early_stopping.patience=1",
                  "--set", "train.early_stopping.min_delta=10.0"])
    assert res.exit_code == 0, res.output
    assert "Early stopping" in res.output
    assert len((tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    first = next(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))     # the best epoch (min_delta 10)
    assert (f"Best val loss {float(first['val_loss']):.4f} (epoch 1, val acc {float(first['val_acc']):.2%}) "
            f"is in {tmp_path / 'run' / 'best.npz'} (restored into last.npz)") in res.output
    best, last = load_params(tmp_path / "run" / "best.npz"), load_params(tmp_path / "run" / "last.npz")
    for k in best:
        if k.startswith("params/"):
            assert np.array_equal(best[k], last[k]), k
    info = invoke(["info", tmp_path / "run" / "last.npz"])              # it says whose weights last.npz holds
    assert info.exit_code == 0 and "trained     2 of 5 epochs" in info.stdout
    assert "weights     epoch 1's (the best, restored by early stopping): train loss " in info.stdout
    assert f"val loss {float(first['val_loss']):.4f} acc {float(first['val_acc']):.2%}\n" in info.stdout
    as_json = json.loads(invoke(["info", tmp_path / "run" / "last.npz", "--json"]).stdout)
    assert as_json["training"]["weights_epoch"]["epoch"] == 1
    assert "weights " not in invoke(["info", tmp_path / "run" / "best.npz"]).stdout   # its own epoch's


def test_a_death_right_after_the_last_checkpoint_leaves_metrics_csv_whole(workspace, tmp_path, monkeypatch):
    # the process dies just after the last epoch's last.npz is written (kill -9 there): the resume has
    # nothing left to train and writes nothing, so metrics.csv must already hold every epoch's row
    from cnncli import trainer

    tmp, _ = workspace
    save_last = trainer.Trainer.save_last

    class Killed(Exception):
        pass

    def save_then_die(self):
        save_last(self)
        if self.state.epoch == self.epochs:
            raise Killed()
    monkeypatch.setattr(trainer.Trainer, "save_last", save_then_die)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        invoke(["train", "--config", tmp / "cfg.yaml", "--out", run, "-q", "--no-report"])
    monkeypatch.setattr(trainer.Trainer, "save_last", save_last)
    res = invoke(["train", "--resume", run, "-q", "--no-report"])
    assert res.exit_code == 0 and "Nothing to do" in res.stderr, res.output
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


@pytest.mark.parametrize("stage, sig", [("test", "SIGUSR1"), ("report", "SIGTERM"), ("test", "SIGINT")])
def test_a_stop_signal_after_training_is_one_line_saying_the_checkpoints_are_saved(workspace, tmp_path, monkeypatch,
                                                                                    stage, sig):
    import os
    import signal

    from cnncli import report, train

    tmp, data = workspace

    def signalled(*args, **kwargs):                                # the signal arrives while it runs
        os.kill(os.getpid(), getattr(signal, sig))
        raise AssertionError("the signal did not stop it")
    monkeypatch.setattr(train if stage == "test" else report, "evaluate_test_data" if stage == "test"
                        else "write_report", signalled)
    run = tmp_path / "run"
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", run, "-q", "--set", "train.epochs=1",
                  "--set", f"data.test={data}", *(["--no-report"] if stage == "test" else [])])
    doing = "while testing best.npz on data.test" if stage == "test" else \
        f"while drawing its report (cnn report {run} draws it)"
    assert res.exit_code == 130, res.output
    test = f"; cnn train --resume {run} runs the test" if stage == "test" else ""
    assert res.stderr.strip().splitlines()[-1] == f"{sig}: stopped after training, {doing}; the run's " \
        f"checkpoints are saved in {run}{test}"
    assert (run / "best.npz").is_file() and (run / "last.npz").is_file()
    assert res.stdout == f"{run}\n"                  # the run folder, as a finished run prints it
    assert signal.getsignal(getattr(signal, sig)) in (signal.SIG_DFL, signal.default_int_handler)   # put back


def test_train_ends_with_a_report(workspace, tmp_path):
    pytest.importorskip("matplotlib", reason="the report is an optional extra (cnncli[plots])")
    tmp, data = workspace
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = invoke(["train", "--config", cfg, "-q"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "run" / "report" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "run" / "report").glob("*.png"))
    assert len(pngs) >= 5 and all(name in html for name in pngs)


def test_predict_in_a_real_process_flushes_everything_before_its_fast_exit(trained):
    tmp, data, run, _ = trained
    res = run_cli(["predict", "--checkpoint", run, data / "bar" / "001.png", tmp / "nope.png", "--json"], tmp)
    assert res.returncode == 1
    assert json.loads(res.stdout)[0]["path"].endswith("001.png")
    assert json.loads(res.stdout)[1] == {"path": str(tmp / "nope.png"), "error": "no such file or folder"}
    assert res.stderr.strip() == f"error: {tmp / 'nope.png'}: no such file or folder"
    ok = run_cli(["predict", "--checkpoint", run, data / "bar" / "001.png"], tmp)
    assert ok.returncode == 0 and ok.stdout.count("\n") == 1


def test_predict_warns_of_nearly_black_and_flat_images_as_train_does(trained, tmp_path):
    tmp, data, run, _ = trained
    shutil.copy(data / "bar" / "001.png", tmp_path / "a.png")
    twelve_bit = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)          # 0..4092 in a 16-bit PNG
    Image.fromarray(twelve_bit).save(tmp_path / "camera.png")
    Image.new("L", (32, 32), 128).save(tmp_path / "blank.png")
    res = invoke(["predict", "--checkpoint", run, tmp_path])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3
    assert res.stderr.splitlines() == [
        f"warning: 1 image(s) decode to a single grey level, e.g. {tmp_path / 'blank.png'}",
        f"warning: 1 image(s) are nearly black (no pixel above 16 of 255), e.g. {tmp_path / 'camera.png'}: its 16-bit "
        "samples reach only 4092 of 65535 (12-bit data); scale such files to their full range first"]
    assert invoke(["predict", "--checkpoint", run, tmp_path / "a.png"]).stderr == ""


def test_predict_of_a_folder_notes_the_files_it_did_not_read(trained, tmp_path):
    tmp, data, run, _ = trained
    shutil.copy(data / "bar" / "001.png", tmp_path / "a.png")
    for name in ("notes.txt", "b.tga", "c.tga"):
        (tmp_path / name).write_text("x")
    res = invoke(["predict", "--checkpoint", run, tmp_path])
    assert res.exit_code == 0 and res.stdout.startswith(str(tmp_path / "a.png"))
    assert res.stderr == ("note: 3 file(s) with other extensions were not read (.tga: 2, .txt: 1); .tga is an image "
                          "format cnn does not read: convert those files to PNG or JPEG\n")
    assert invoke(["predict", "--checkpoint", run, tmp_path / "a.png"]).stderr == ""


def test_predict_names_what_a_path_that_is_no_file_is(trained, tmp_path):
    import os

    tmp, data, run, _ = trained
    os.mkfifo(tmp_path / "fifo.png")                      # (a read would block for ever: never opened)
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    res = invoke(["predict", "--checkpoint", run, tmp_path / "fifo.png", tmp_path / "dangling.png",
                  tmp_path / "nope.png"])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        f"error: {tmp_path / 'nope.png'}: no such file or folder",
        f"error: {tmp_path / 'fifo.png'}: not a regular file (a FIFO)",
        f"error: {tmp_path / 'dangling.png'}: broken symbolic link (what it points to does not exist)",
        "3 of 3 could not be classified"]


def test_predict_into_a_pipe_the_reader_closes_ends_quietly_with_sigpipes_status(trained):
    tmp, data, run, _ = trained
    paths = " ".join([str(data / "bar")] * 80)                     # ~1,000 lines: more than a pipe holds
    for form, first in (("", str(data / "bar")), (" --csv -", "path,class,probability"), (" --json", "[")):
        script = (f"{sys.executable} -m cnncli predict --checkpoint {run}{form} {paths} | head -1; "
                  "echo \"status ${PIPESTATUS[0]}\"")
        res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=cli_env(tmp), timeout=300)
        lines = res.stdout.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith(first) and lines[1] == "status 141", (form, res.stdout)
        assert res.stderr == "", (form, res.stderr)                # no traceback, no error line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_standard_output_is_one_line_naming_it(trained):
    tmp, data, run, _ = trained
    with open("/dev/full", "w") as full:                           # every write: ENOSPC
        res = subprocess.run([sys.executable, "-m", "cnncli", "info", str(run)], stdout=full, stderr=subprocess.PIPE,
                             text=True, env=cli_env(tmp), timeout=300)
    assert res.returncode == 1
    assert res.stderr == "Error: cannot write to standard output: No space left on device\n"


def test_an_os_error_naming_no_file_is_not_taken_for_standard_outputs():
    import errno

    from cnncli.cli_common import UserError, user_errors

    @user_errors
    def save():
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError) as err:
        save()
    assert err.value.format_message() == "no space left on the device: free some space, or write elsewhere"


def test_a_deleted_current_folder_is_one_line_saying_so(workspace, tmp_path):
    tmp, data = workspace
    script = (f"mkdir gone && cd gone && rmdir ../gone && exec {sys.executable} -m cnncli train --config "
              f"{tmp / 'cfg.yaml'} --out {tmp_path / 'run'} -q --no-report")
    res = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=cli_env(tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr == ("Error: the current folder no longer exists (deleted since this shell entered it): cd to "
                          "a folder that exists and run the command again\n")


def test_eval_predict_and_export_default_to_the_newest_run_under_runs(trained, tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from cnncli.cli_common import RUNS
    from cnncli.options import DEFAULTS
    from cnncli.runs import newest_run

    tmp, data, run, _ = trained
    monkeypatch.chdir(tmp_path)
    img = data / "bar" / "001.png"
    res = invoke(["predict", img])                           # no ./runs yet: one line, nothing predicted
    assert res.exit_code == 1 and res.stdout == "" and res.stderr.startswith("Error: no --checkpoint given")
    assert res.stderr.count("\n") == 1
    for name, age in (("old", 100), ("new", 10), ("fresh-no-checkpoint", 0)):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        if name != "fresh-no-checkpoint":
            shutil.copy(run / "best.npz", folder / "best.npz")
            os.utime(folder / "best.npz", (1e9 - age, 1e9 - age))
        else:
            (folder / "config.yaml").write_text("seed: 0\n")  # a run still starting: no checkpoint to use
    assert newest_run("runs") == Path("runs", "new") and newest_run(tmp_path / "none") is None
    assert Path(DEFAULTS["out"]).parent == Path(RUNS)              # the default is where cnn train writes
    shutil.copy(run / "best.npz", tmp_path / "runs" / "old" / "last.npz")        # written now: old is the newest
    os.utime(tmp_path / "runs" / "old" / "last.npz", (2e9, 2e9))
    default = res = invoke(["predict", img])
    assert res.exit_code == 0 and res.stdout.startswith(str(img))
    assert res.stderr == f"Checkpoint: {os.path.join('runs', 'old')} (the newest run under ./runs; --checkpoint " \
                         "picks another)\n"
    res = invoke(["eval", "--data", data, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["num_images"] > 0 and "Checkpoint: runs/old" in res.stderr
    import fcntl                                   # (a run in training: two calls seconds apart took two models)
    for held, says in (("old", "which a process trains now: its checkpoint so far; "),
                       ("fresh-no-checkpoint", "; runs/fresh-no-checkpoint, in training, has no checkpoint yet; ")):
        with open(tmp_path / "runs" / held / ".claimed", "a+") as lock:      # as runlock.hold() holds it
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            res = invoke(["predict", img])
        assert res.exit_code == 0 and says in res.stderr, res.stderr
        (tmp_path / "runs" / held / ".claimed").unlink()
    given = invoke(["predict", "--checkpoint", run, img])     # given: used, nothing said (the same weights)
    assert given.exit_code == 0 and given.stderr == "" and given.stdout == default.stdout
    first = invoke(["predict", tmp_path / "runs" / "new" / "best.npz", img])   # cnn predict model.npz image.png
    assert first.exit_code == 0 and first.stderr == "" and first.stdout.startswith(str(img))
    folder = invoke(["predict", run, img])                   # a run folder first: the checkpoint, as a .npz
    assert folder.exit_code == 0 and folder.stderr == "" and folder.stdout == default.stdout
    assert invoke(["predict", run]).exit_code == 2           # (and not a folder of images to classify)
    alone = invoke(["predict", tmp_path / "runs" / "new" / "best.npz"])
    assert alone.exit_code == 2 and "is a checkpoint: give the images to classify after it" in alone.stderr
    pytest.importorskip("onnx")
    res = invoke(["export", "-o", tmp_path / "m.onnx"])
    assert res.exit_code == 0 and (tmp_path / "m.onnx").is_file() and "Checkpoint: runs/old" in res.stderr
    cv = tmp_path / "runs" / "cv"                  # a cnn cv whose last fold is the newest run
    for k, age in ((1, 5), (2, 0)):
        (cv / f"fold-{k}").mkdir(parents=True)
        shutil.copy(run / "best.npz", cv / f"fold-{k}" / "best.npz")
        os.utime(cv / f"fold-{k}" / "best.npz", (3e9 - age, 3e9 - age))
    res = invoke(["predict", img])                          # cv.json not written yet (cv still training): the fold
    assert res.exit_code == 0 and "Checkpoint: runs/cv/fold-2 (the newest run" in res.stderr
    (cv / "cv.json").write_text("{}")
    res = invoke(["predict", img, "--json"])                # finished: both folds, as --checkpoint runs/cv
    assert res.exit_code == 0 and res.stderr == ("Checkpoint: runs/cv (the newest run under ./runs is its fold-2: "
                                                 "the cnn cv's folds as an ensemble; --checkpoint picks another)\n")
    assert res.stdout == invoke(["predict", "--checkpoint", cv, img, "--json"]).stdout
    res = invoke(["eval", "--data", data, "--json"])
    assert res.exit_code == 0 and "Checkpoint: runs/cv (" in res.stderr
    assert json.loads(res.stdout)["checkpoint"] == [os.path.join("runs", "cv", f"fold-{k}", "best.npz") for k in (1, 2)]
    res = invoke(["export", "-o", tmp_path / "m2.onnx"])    # one model to export: the newest fold
    assert res.exit_code == 0 and "Checkpoint: runs/cv/fold-2 (" in res.stderr


def test_a_second_ctrl_c_during_training_aborts_in_one_line(workspace, tmp_path, monkeypatch):
    import os
    import signal

    from cnncli import trainer as trainer_mod

    tmp, data = workspace
    real = trainer_mod.Trainer.train_step

    def twice(self, idx):                                           # Ctrl-C, and again before the step ends
        import time

        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.6)                     # (within StopFlag.SAME_SIGINT it would be the same Ctrl-C, twice)
        os.kill(os.getpid(), signal.SIGINT)
        return real(self, idx)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", twice)
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", tmp_path / "run", "-q", "--no-report",
                  "--set", "train.epochs=1"])
    assert res.exit_code == 130 and res.stderr.strip().splitlines()[-1] == "Error: interrupted", res.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler                   # put back


def _long_run_once(tmp, out, every, first):
    """A 400-epoch `cnn train` process (a checkpoint every `every` steps), returned once out/first exists."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "train", "--config", str(tmp / "cfg.yaml"), "--out",
                             str(out), "-q", "--no-report", "--set", "train.epochs=400", "--set",
                             f"train.checkpoint_every={every}"], env=cli_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / first).exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.005)
    return proc


def test_a_second_ctrl_c_while_a_stopped_run_exits_keeps_its_status(workspace, tmp_path):
    # two Ctrl-C 50 ms apart: the first stops the run (saved, its line), the second came during the
    # interpreter's teardown, where Python had put SIGINT back to the default: the process died by
    # the signal (-2) instead of exiting 130
    import signal
    import time

    tmp, _ = workspace
    proc = _long_run_once(tmp, tmp_path / "run", 1, "last.npz")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "SIGINT: stopped at epoch " in err, (proc.returncode, err)


def test_sighup_stops_a_run_as_sigterm_does(workspace, tmp_path):
    # the terminal closed: the run died at once (exit 129) without a save or a resume line
    import signal

    tmp, _ = workspace
    out = tmp_path / "run"
    proc = _long_run_once(tmp, out, 1000, "metrics.csv")
    proc.send_signal(signal.SIGHUP)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "SIGHUP: stopped at epoch " in err, (proc.returncode, err)
    assert f"resume with: cnn train --resume {out}" in err and (out / "last.npz").is_file()
    assert stdout == f"{out}\n"                     # the run folder, as a finished run prints it


def test_training_with_stderr_closed_runs_to_the_end(workspace, tmp_path):
    # `cnn train ... 2>&-` (cron): sys.stderr was None and the first progress line crashed the run
    import os

    tmp, _ = workspace
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cnncli", "train", "--config", str(tmp / "cfg.yaml"), "--out", str(out),
                        "--no-report", "--set", "train.epochs=1"], env=cli_env(tmp), stdout=subprocess.PIPE,
                       text=True, preexec_fn=lambda: os.close(2))
    assert r.returncode == 0 and r.stdout.strip() == str(out) and (out / "last.npz").is_file()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_training_with_a_full_stderr_runs_to_the_end_as_with_stderr_closed(workspace, tmp_path):
    # `cnn train ... 2>/dev/full`: the first line's ENOSPC ended the run in set-up, exit 1, its folder
    # gone, and the error line, written to the same stderr, was lost too: nothing anywhere
    tmp, _ = workspace
    out = tmp_path / "run"
    with open("/dev/full", "w") as full:                           # every write: ENOSPC
        r = subprocess.run([sys.executable, "-m", "cnncli", "train", "--config", str(tmp / "cfg.yaml"), "--out",
                            str(out), "--no-report", "--set", "train.epochs=1"], env=cli_env(tmp),
                           stdout=subprocess.PIPE, stderr=full, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout == f"{out}\n" and (out / "last.npz").is_file()
    assert len((out / "metrics.csv").read_text().splitlines()) == 2          # its header and epoch 1


def test_a_stderr_whose_reader_left_still_raises_through_the_lossy_stderr():
    import io

    from cnncli.process import LossyStderr

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):                 # (cnn train stops as when its terminal closes)
        LossyStderr(Gone()).write("line\n")


def test_predictions_and_metrics_into_a_closed_stdout_are_refused(trained, tmp_path):
    # `cnn predict RUN IMAGES >&-`: the predictions went to /dev/null and the command exited 0 (with
    # --csv -, "3 prediction(s) in standard output")
    tmp, data, run, _ = trained
    image = next((data / "disc").glob("*.png"))

    def closed(*args):
        return subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], env=cli_env(tmp), text=True,
                              stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))

    for args in (["predict", run, image], ["predict", run, image, "--csv", "-"], ["eval", run, "--data", data]):
        r = closed(*args)
        what = "the metrics" if args[0] == "eval" else "the predictions"
        assert r.returncode == 1 and r.stderr == (f"Error: standard output is closed: {what} would be lost; "
                                                  "redirect it to a file (> FILE)\n"), (args, r.stderr)
    # what has somewhere else to go runs: a --csv file, an eval gate's exit status
    r = closed("predict", run, image, "--csv", tmp_path / "p.csv")
    assert r.returncode == 0 and (tmp_path / "p.csv").read_text().count("\n") == 2, r.stderr
    assert closed("eval", run, "--data", data, "--fail-under", 0).returncode == 0


def test_an_out_folder_whose_name_is_not_utf8_is_refused_before_anything_is_made(workspace, tmp_path):
    # a traceback from the YAML writer of config.yaml, after the folder was made
    tmp, _ = workspace
    out = str(tmp_path / "bytes\udcfedir")                      # (a command line's undecodable byte)
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", out, "-q", "--no-report"])
    assert res.exit_code == 2 and res.output.strip() == (
        f"Error: --out {tmp_path}/bytes\\xfedir: the path holds bytes that are not valid UTF-8; choose a name that is")
    assert os.listdir(tmp_path) == []


def test_a_run_folder_emptied_while_training_gets_its_config_back_with_a_warning(workspace, tmp_path, monkeypatch):
    # rm -rf of the run folder mid-run: the checkpoints came back, config.yaml did not (cnn report failed)
    import shutil

    from cnncli import trainer as trainer_mod

    tmp, _ = workspace
    out = tmp_path / "run"
    real, calls = trainer_mod.Trainer.train_step, []

    def step(self, idx):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(out)
        return real(self, idx)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)
    res = invoke(["train", "--config", tmp / "cfg.yaml", "--out", out, "-q", "--no-report", "--set", "train.epochs=1",
                  "--set", "train.checkpoint_every=1"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count(f"warning: {out / 'config.yaml'} is gone (was the run folder deleted or emptied while "
                            "the run trained?)") == 1, res.stderr
    assert (out / "config.yaml").is_file() and (out / "last.npz").is_file()
