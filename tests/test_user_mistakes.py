"""Mistakes a new user made in a helper's pass over configs and command lines (2026-12-07), each
one line that says what to do: a huge train.batch_size (it allocated augmentation buffers for it and
died with a traceback, leaving a folder), running out of memory at all, lr-find's suggestion below the
config's optim.min_lr, optim.min_lr checked for schedules that never read it, --out inside the
training folder, a folder named 2024 or no given with --set, data.demo with a path it does not make,
settings the optimizer or schedule ignores, config keys given as options, a config file given without
--config, --fail-under 90. Each test failed against the old code."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cnncli import config, lrfind
from cnncli.errors import ConfigError
from e2e_util import invoke, make_folder, private_cache, write_config  # noqa: F401


@pytest.fixture()
def small(tmp_path, private_cache):                      # noqa: F811
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    return tmp_path, data, write_config(tmp_path / "c.yaml", data, tmp_path / "runs" / "x", epochs=1)


def test_a_batch_size_far_above_the_images_trains_with_augmentation(small):
    tmp, _, cfg = small
    res = invoke(["train", "--config", cfg, "-q", "--no-report", "--set", "train.batch_size=1e9",
                  "--set", "augment.enabled=true"])
    assert res.exit_code == 0, res.output
    assert (tmp / "runs" / "x" / "last.npz").exists()


def test_out_of_memory_is_one_line_and_gives_the_new_folder_back(small, monkeypatch):
    from cnncli import trainer

    tmp, _, cfg = small

    def no_memory(*a, **k):
        raise MemoryError("Unable to allocate 127. GiB for an array with shape (1000000000, 17)")
    monkeypatch.setattr(trainer.Trainer, "__init__", no_memory)
    res = invoke(["train", "--config", cfg, "-q", "--no-report"])
    assert res.exit_code == 1
    assert res.stderr.strip() == ("Error: out of memory (Unable to allocate 127. GiB for an array with shape "
                                  "(1000000000, 17))"), res.stderr
    assert not (tmp / "runs" / "x").exists() or not any((tmp / "runs" / "x").iterdir())


def test_lr_find_lowers_a_min_lr_above_its_suggestion_and_other_schedules_ignore_min_lr():
    r = {"lr": [1e-3] * 20, "smoothed": [1.0] * 20, "stopped": None, "suggested": 1.07e-05}
    optim = {"schedule": "cosine", "lr": 1e-3, "min_lr": 3e-5}
    assert lrfind.format_result(r, "adam", "--config c.yaml", optim).endswith(
        "try: cnn train --config c.yaml --set optim.lr=1.07e-05 --set optim.min_lr=3.21e-07")
    for schedule, floor in (("cosine", 1e-6), ("constant", 3e-5)):     # below it, or not read: as it was
        text = lrfind.format_result(r, "adam", "--config c.yaml", {**optim, "schedule": schedule, "min_lr": floor})
        assert text.endswith("--set optim.lr=1.07e-05"), text
    for schedule in ("constant", "step"):
        cfg = config.load_config([], ["data.train=x", f"optim.schedule={schedule}", "optim.lr=1e-5",
                                      "optim.min_lr=3e-5"])
        assert cfg["optim"]["min_lr"] == 3e-5
    with pytest.raises(ConfigError, match=r"optim.min_lr: must be <= optim.lr"):
        config.load_config([], ["data.train=x", "optim.schedule=plateau", "optim.lr=1e-5", "optim.min_lr=3e-5"])


def test_out_inside_the_training_folder_is_refused_before_anything_is_written(small):
    _, data, cfg = small
    before = sorted(p.name for p in data.iterdir())
    res = invoke(["train", "--config", cfg, "-q", "--no-report", "--out", data / "newclass"])
    assert res.exit_code == 1
    assert "is inside data.train" in res.stderr and "choose another --out" in res.stderr, res.stderr
    assert sorted(p.name for p in data.iterdir()) == before


def test_set_takes_a_folder_named_like_a_number_or_a_boolean_as_text():
    for text, value in (("data.train=2024", "2024"), ("out=no", "no"), ("data.test=1.5", "1.5"),
                        ("data.val=2024-01-02", "2024-01-02")):
        assert config.parse_override(text) == (text.split("=")[0], value)
    assert config.parse_override("train.epochs=3") == ("train.epochs", 3)     # (typed keys as before)
    assert config.parse_override("data.val=null") == ("data.val", None)


def test_data_demo_says_where_it_makes_the_demo(tmp_path):
    res = invoke(["train", "-q", "--set", "data.demo=true", "--set", f"data.train={tmp_path / 'dd' / 'foo'}"])
    assert res.exit_code != 0
    assert "data.demo makes the demo only as FOLDER/train" in res.stderr, res.stderr
    assert f"--set data.train={tmp_path / 'dd' / 'train'}" in res.stderr
    assert not (tmp_path / "dd").exists()


def test_a_min_delta_in_percent_for_an_accuracy_monitor_gets_a_note():
    cfg = config.load_config_text("", ["data.train=x", "train.monitor=val_acc", "train.early_stopping.min_delta=50",
                                       "train.epochs=3"])
    assert config.setting_notes(cfg) == ["train.early_stopping.min_delta=50 is in val acc's units, a fraction (0.01 "
                                         "is one point): no epoch improves on the first by it"]
    cfg = config.load_config_text("", ["data.train=x", "train.early_stopping.min_delta=50", "train.epochs=3"])
    assert config.setting_notes(cfg) == []                       # (a loss may fall by 50)


def test_a_shift_written_as_a_fraction_gets_a_note():
    cfg = config.load_config_text("", ["data.train=x", "augment.affine.shift=0.1", "train.epochs=3"])
    assert config.setting_notes(cfg) == ["augment.affine.shift=0.1 is in pixels (of 32), not a fraction of the width "
                                         "as Keras' width_shift_range: it moves an image by under a pixel"]
    assert config.setting_notes(config.load_config_text("", ["data.train=x", "train.epochs=3"])) == []


def test_settings_the_optimizer_or_schedule_does_not_read_get_a_note():
    def notes(*sets):
        return config.setting_notes(config.resolve_epochs(config.load_config([], ["data.train=x", *sets]), 1000))
    assert notes() == []
    assert notes("optim.momentum=0.5") == ["optim.momentum=0.5 does nothing in this run: optim.name=adam has no "
                                           "momentum"]
    assert notes("optim.name=momentum", "optim.momentum=0.5") == []
    assert notes("optim.name=sgd", "optim.betas=[0.5, 0.5]") == [
        "optim.betas=[0.5, 0.5] does nothing in this run: only adam and adamw read them"]
    assert notes("optim.schedule=constant", "optim.min_lr=1e-4") == [
        "optim.min_lr=0.0001 does nothing in this run: optim.schedule=constant has no floor"]
    # (a Keras/Lightning user's settings that were silently ignored)
    assert notes("optim.schedule=constant", "optim.step_size=3", "optim.plateau_patience=7", "optim.gamma=0.5") == [
        "optim.step_size=3 does nothing in this run: optim.schedule=constant has no steps (step reads it)",
        "optim.gamma=0.5 does nothing in this run: optim.schedule=constant has no drops (step and plateau read it)",
        "optim.plateau_patience=7 does nothing in this run: optim.schedule=constant is not plateau"]
    assert notes("optim.schedule=step", "optim.step_size=3", "optim.gamma=0.5") == []
    assert notes("data.val=v", "data.val_split=0.3") == [
        "data.val_split=0.3 does nothing in this run: data.val names the validation images"]
    assert notes("data.folds=3", "data.val_split=0.3") == [
        "data.val_split=0.3 does nothing in this run: data.folds' folds hold the validation images"]
    assert notes("model.bn_eps=0.001") == ["model.bn_eps=0.001 does nothing in this run: model.batchnorm is none"]
    assert notes("model.batchnorm=unit", "model.bn_eps=0.001") == []
    assert notes("augment.enabled=false", "augment.affine.rotate=45") == [
        "augment.affine.rotate=45.0 does nothing in this run: augment.enabled is false"]
    assert notes("optim.name=adamw") == [
        "optim.name=adamw with optim.weight_decay=0 is Adam: AdamW's decoupled decay needs a weight decay (PyTorch's "
        "default is 0.01, Keras' 0.004)"]
    assert notes("optim.name=adamw", "optim.weight_decay=0.01") == []


@pytest.mark.parametrize("args, line", [
    (["train", "--epochs", "3"], "Error: No such option: --epochs; config keys are set with --set train.epochs=VALUE"),
    (["train", "--lr", "0.1"], "Error: No such option: --lr; config keys are set with --set optim.lr=VALUE"),
    (["cv", "--data", "x"], "Error: No such option: --data; config keys are set with --set data.train=VALUE"),
    (["train", "base.yaml"], "Error: Got unexpected extra argument (base.yaml); give a config file with "
                             "--config base.yaml"),
    (["lr-find", "a.yml"], "Error: Got unexpected extra argument (a.yml); give a config file with --config a.yml"),
    (["eval", "--fail-under", "90"], "Error: Invalid value for '--fail-under': 90 is not in the range 0<=x<=1; "
                                     "90% is 0.9"),
])
def test_options_that_are_config_keys_a_bare_config_file_and_a_percentage_get_a_hint(args, line):
    res = invoke(args)
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines()[-1] == line, res.stderr


def test_a_bare_data_folder_gets_a_hint(tmp_path):
    # (cnn train my_data said only 'Got unexpected extra argument (my_data)')
    for cmd in ("train", "cv", "lr-find"):
        res = invoke([cmd, str(tmp_path)])
        assert res.exit_code == 2
        assert res.stderr.strip().splitlines()[-1] == (f"Error: Got unexpected extra argument ({tmp_path}); give the "
                                                       f"data folder with --set data.train={tmp_path}"), res.stderr


def test_a_validation_split_of_a_few_images_a_class_gets_a_note(small):
    # 4-10 images a class: 10% held out is one image a class, and best.npz was often an early epoch; at 20 a class
    # (2 validate) best.npz was epoch 11 of 400 (test 19%, last.npz 45-60%; a helper's run)
    tmp, _, cfg = small
    note = "validation image(s) for 3 classes pick best.npz and early stopping, so one image can decide"
    for split, shown in (("0.1", 3), ("0.5", 9)):                            # 1 and 3 images a class
        res = invoke(["train", "--config", cfg, "-q", "--no-report", "--set", f"data.val_split={split}"])
        assert res.exit_code == 0 and f"note: only {shown} " + note in res.stderr, res.stderr
    more = make_folder(tmp / "more", per_class=10, odd_files=False)          # 5 images a class
    res = invoke(["train", "--config", cfg, "-q", "--no-report", "--set", f"data.train={more}",
                  "--set", "data.val_split=0.5"])
    assert res.exit_code == 0 and note not in res.stderr, res.stderr


def test_resuming_a_run_killed_before_its_first_save_says_to_start_it_again(small):
    # kill -9 in the first epoch (checkpoint_every 100) left config.yaml and no checkpoint
    tmp, _, cfg = small
    assert invoke(["train", "--config", cfg, "-q", "--no-report"]).exit_code == 0
    run = tmp / "runs" / "x"
    for name in ("last.npz", "best.npz", "metrics.csv"):
        (run / name).unlink()
    res = invoke(["train", "--resume", run, "-q", "--no-report"])
    assert res.exit_code == 1
    hint = f"cnn train --config {run / 'config.yaml'}"
    assert res.stderr.strip() == (f"Error: {run}: run folder has no last.npz: its run stopped before its first "
                                  f"save (nothing trained to go on from); start it again: {hint}"), res.stderr
    res = invoke(hint.split()[1:] + ["-q", "--no-report"])
    assert res.exit_code == 0 and (tmp / "runs" / "x-2" / "last.npz").exists(), res.stderr


def test_a_nul_character_in_a_path_is_refused_in_one_line():
    # (os.path.expanduser('~\x00') raised ValueError from the config's path checks: hypothesis found it)
    with pytest.raises(ConfigError, match=r"data.train: holds a NUL character"):
        config.validate(config.nest({"data.train": "~\x00"}))


def test_second_looks_at_this_sessions_fixes(small, tmp_path):
    # (a helper's adversarial pass): a NUL after ~ reached os.path.expanduser before the value check;
    # '--set data.train=2024 #old' kept the comment as the value; a hidden run folder inside the data is
    # never read as a class; cnn cv checked --out inside the data only after the first fold began
    with pytest.raises(ConfigError, match=r"data.train: holds a NUL character"):
        config.load_config_text("data:\n  train: \"~\\0\"\n", source="c.yaml")
    with pytest.raises(ConfigError, match=r"data.train: expected a string, got int 2024"):
        config.parse_override("data.train=2024 #old") and config.load_config([], ["data.train=2024 #old"])
    tmp, data, cfg = small
    res = invoke(["train", "--config", cfg, "-q", "--no-report", "--out", data / ".runs" / "a"])
    assert res.exit_code == 0, res.stderr
    res = invoke(["cv", "--config", cfg, "-q", "--folds", "2", "--out", data / "cvrun"])
    assert res.exit_code == 1 and "is inside data.train" in res.stderr and "choose another --out" in res.stderr
    assert "fold 1" not in res.stderr and not (data / "cvrun").exists()


def test_resuming_a_run_whose_last_npz_arrays_are_damaged_points_to_its_best(small):
    tmp, _, cfg = small
    assert invoke(["train", "--config", cfg, "-q", "--no-report"]).exit_code == 0
    last = tmp / "runs" / "x" / "last.npz"
    raw = bytearray(last.read_bytes())
    raw[300:500] = bytes(200)                                   # (in the parameter arrays: a bad CRC-32)
    last.write_bytes(bytes(raw))
    res = invoke(["train", "--resume", last.parent, "-q", "--no-report", "--set", "train.epochs=2"])
    assert res.exit_code == 1
    assert res.stderr.strip().endswith(f"; the run's best.npz can go on from its epoch: cnn train --resume "
                                       f"{last.parent / 'best.npz'}"), res.stderr


def test_a_cache_folder_setting_with_a_tilde_or_a_relative_xdg_path_is_not_taken_literally(monkeypatch, tmp_path):
    # (CNNCLI_CACHE_DIR='~/c' made a folder named ~ in the working folder)
    from cnncli.data.cache import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CNNCLI_CACHE_DIR", "~/c")
    assert cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("CNNCLI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relx")
    assert cache_dir() == str(tmp_path / ".cache" / "cnncli")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert cache_dir() == str(tmp_path / "xdg" / "cnncli")


def test_cnn_demo_in_a_folder_it_cannot_write_is_one_line(tmp_path, monkeypatch):
    # (it printed "Error: [Errno 30] Read-only file system: ..." naming neither the demo nor a way on)
    import errno
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    res = invoke(["demo", tmp_path / "demo"])
    assert res.exit_code == 1 and res.output == (f"Error: demo folder {tmp_path / 'demo'}: cannot be made "
                                                 "(the file system is read-only: write elsewhere)\n"), res.output


@pytest.mark.parametrize("given, hint", [
    ("optim.learning_rate=0.01", "unknown key; did you mean 'optim.lr'?"),
    ("optim.optimizer=adam", "unknown key; did you mean 'optim.name'?"),
    ("optim.type=sgd", "unknown key; did you mean 'optim.name'?"),
    ("optim.nesterov=true", "unknown key; did you mean optim.name: nesterov?"),
    ("augment.horizontal_flip=0.5", "unknown key; did you mean 'augment.flip.horizontal' (a probability, e.g. 0.5)?"),
    ("augment.rotation=10", "unknown key; did you mean 'augment.affine.rotate'?"),
    ("optim.schedule=ReduceLROnPlateau", "got 'ReduceLROnPlateau'; did you mean 'plateau'?"),
    ("optim.schedule=CosineAnnealingLR", "got 'CosineAnnealingLR'; did you mean 'cosine'?"),
    ("optim.schedule=none", "got 'none'; did you mean 'constant'?"),                  # (not 'cosine')
    ("train.monitor=accuracy", "got 'accuracy'; did you mean 'val_acc'?"),
])
def test_keras_and_pytorch_names_get_ours(given, hint):
    # (a Keras/Lightning user's names got no suggestion, and schedule: none suggested cosine)
    with pytest.raises(ConfigError) as err:
        config.load_config_text("", ["data.train=x", given])
    assert str(err.value).endswith(hint), str(err.value)


def test_a_class_weight_keyed_by_index_says_keys_are_names():
    from cnncli.balance import class_weights

    with pytest.raises(ConfigError, match="the keys are class names, not indices: class 0 is 'cat'"):
        class_weights({0: 2.0}, np.array([0, 1]), ["cat", "dog"])
    with pytest.raises(ConfigError, match="the keys are class names, not indices: class 1 is 'dog'"):
        class_weights(config.load_config_text("", ["data.train=x", "train.class_weight={1: 2}"])["train"]
                      ["class_weight"], np.array([0, 1]), ["cat", "dog"])       # (the key as --set gives it: '1')


def test_the_python_train_function_fills_a_partial_config(tmp_path):
    # cnncli.train.train({"data": {"train": ...}}) raised a bare KeyError 'val': it needed a resolved config
    from cnncli.train import train

    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    run = train({"data": {"train": str(data)}, "train": {"epochs": 1, "batch_size": 4}, "out": str(tmp_path / "r")},
                quiet=True, echo=lambda *a: None)
    assert (run / "last.npz").is_file()
    run = train({"train": {"epochs": 2}}, resume=run, quiet=True, echo=lambda *a: None)   # (batch 4 kept: it said
    assert run == tmp_path / "r"                                   # 'train.batch_size cannot change ... 64')
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        train({"data": {"train": str(data)}, "train": {"epoch": 1}}, quiet=True, echo=lambda *a: None)
    for bad in ({}, None, {"data": None}):                  # (a TypeError from pathlib; an AttributeError)
        with pytest.raises(ConfigError, match="data.train is not set"):
            train(bad, quiet=True, echo=lambda *a: None)
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        train([], quiet=True, echo=lambda *a: None)
    run = train({"data": None, "train": {"epochs": 3}}, resume=run, quiet=True, echo=lambda *a: None)
    assert run == tmp_path / "r"                           # (an empty section over the run's config: no change)
    with pytest.raises(ConfigError, match="class_weight"):   # (a leaf's null is a value, refused as on the CLI)
        train({"train": {"class_weight": None, "epochs": 4}}, resume=run, quiet=True, echo=lambda *a: None)


def test_a_data_folder_written_none_says_yaml_writes_null(tmp_path, monkeypatch):
    # (data.val: none was the folder ./none, 'does not exist', with no word of YAML's null)
    monkeypatch.chdir(tmp_path)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    res = invoke(["train", "--set", f"data.train={data}", "--set", "data.val=None", "-q", "--no-report"])
    assert res.exit_code == 1 and res.stderr.strip().endswith(
        f"data folder {tmp_path / 'None'}: does not exist (none is a folder's name here: a config's no-value is "
        "null, or ~, or the key left out)"), res.stderr


@pytest.mark.parametrize("text, hint", [
    ("data:\n  train: x\n    val: y\n", "mapping values are not allowed in this context (a line indented more than "
                                        "the key above it, whose value is already given, or a ': ' inside a value to "
                                        "quote)"),
    ("optim:\n  lr: 0.01\n name: adam\n", "(a line indented less than the keys above it) (begun on line 1)"),
    ("data:\n  train: x\ntrain:\n  epochs:1\n  batch_size: 16\n",        # (it blamed indentation on line 5)
     "mapping values are not allowed in this context (line 4: a key needs a space after its ':', or it is read as "
     "text)"),
    ("data:\n  train:data/x\n      # where the images are\n  test: data/t\n",    # (a comment between)
     "(line 2: a key needs a space after its ':', or it is read as text) (begun on line 1)"),
])
def test_a_misindented_config_line_gets_an_indentation_hint(text, hint):
    with pytest.raises(ConfigError) as err:
        config.load_config_text(text)
    assert str(err.value).endswith(hint) and "could not parse YAML: " in str(err.value), str(err.value)


@pytest.mark.parametrize("text", ["data:\n  train: 'Bob's photos'\n", 'data:\n  train: "data/train" x\n',
                                  "data:\n  train: [a] b\n",
                                  "data:\n  train: d\n  notes: |\n    ratio:1\n  test: a: b\n",
                                  'train:\n  epochs: 1\n  lr: "0.1\n    x:1"\n  seed: 1: 2\n'])
def test_a_quoting_mistake_gets_no_indentation_hint(text):
    with pytest.raises(ConfigError) as err:
        config.load_config_text(text)
    assert "could not parse YAML" in str(err.value) and "indented less" not in str(err.value) \
        and "needs a space" not in str(err.value), str(err.value)


def test_out_dot_in_a_busy_working_folder_is_its_sibling_not_a_traceback(tmp_path, monkeypatch):
    # (--out . in a folder holding files: ValueError: PosixPath('.') has an empty name)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    res = invoke(["train", "--set", f"data.train={data}", "--set", "train.epochs=1", "--out", ".", "-q",
                  "--no-report"])
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "work-2"), res.output
    assert sorted(os.listdir(work)) == ["notes.txt"]
