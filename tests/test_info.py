"""`cnn info`: a checkpoint's layers against the reference network's own activations (names, output
shapes) and the file's own arrays (parameter counts), its training progress against the run state it
was saved with, hostile metadata shown as unknown, broken files refused in one line, no numba import."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import reference as ref
from cnncli import checkpoint, model, optim
from cnncli.cli import cli
from cnncli.config import load_config
from cnncli.train import RunState, save_checkpoint
from e2e_util import run_cli_probing_numba

CLASSES = ["circle", "square", "star", "naïve é"]
PREP = {"image_size": 32, "resize": "crop", "mean": 0.25, "std": 0.5}
HISTORY = [{"epoch": 1, "step": 3, "train_loss": 3.1, "train_acc": 0.4, "val_loss": 3.0, "val_acc": 0.42,
            "lr": 0.01, "time_s": 1.5},
           {"epoch": 2, "step": 6, "train_loss": 2.5, "train_acc": 0.55, "val_loss": 2.6, "val_acc": 0.5,
            "lr": 0.01, "time_s": 3.0}]


def _save(path, batchnorm, state=None, epochs=7):
    cfg = load_config(None, [f"model.batchnorm={batchnorm}", "data.train=x", f"train.epochs={epochs}"])
    net = model.Network(num_classes=len(CLASSES), batchnorm=batchnorm, seed=3)
    opt = optim.Optimizer("adam", net.params.flat.size, 1e-3)
    save_checkpoint(path, net, opt, state or RunState(), cfg, CLASSES, PREP)
    return path


def _info(*args):
    res = CliRunner().invoke(cli, ["info", *map(str, args)])
    return res


def _reference_layers(arrays, batchnorm):
    """[(name, output shape)] of one image through tests/reference.py's layers, in order."""
    P = {k[len("params/"):]: v.astype(np.float64) for k, v in arrays.items() if k.startswith("params/")}
    a = np.random.default_rng(0).standard_normal((2, 1, 32, 32))
    out = [("input", a.shape[1:])]

    def step(name, value):
        out.append((name, value.shape[1:]))
        return value

    def bn(z, k):
        if batchnorm == "none":
            return z
        g, b = P[f"bn{k}.gamma"], P[f"bn{k}.beta"]
        if batchnorm == "channel" and z.ndim == 4:
            g, b, axes = g.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1), (0, 2, 3)
        else:
            axes = (0,)
        return step(f"bn{k}", ref.bn_forward(z, g, b, 1e-5, axes)[0])

    for k in (1, 2):
        a = step(f"conv{k}", ref.conv2d_forward(a, P[f"conv{k}.w"], P[f"conv{k}.b"], 2))
        a = step(f"pool{k}", ref.maxpool_forward(step(f"elu{k}", ref.elu(bn(a, k))))[0])
    a = step("flatten", a.reshape(a.shape[0], -1))
    a = step("fc1", a @ P["fc1.w"].T + P["fc1.b"])
    a = step("elu3", ref.elu(bn(a, 3)))
    a = step("fc2", a @ P["fc2.w"].T + P["fc2.b"])
    step("sigmoid", 1 / (1 + np.exp(-a)))
    return out


@pytest.mark.parametrize("batchnorm", ["none", "unit", "channel"])
def test_layers_follow_the_reference_network_and_count_the_files_arrays(tmp_path, batchnorm):
    path = _save(tmp_path / "m.npz", batchnorm)
    res = _info(path, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    arrays, _ = checkpoint.load(path)
    assert [(r["name"], tuple(r["output"])) for r in info["layers"]] == _reference_layers(arrays, batchnorm)

    def counts(prefix):                            # layer -> values of its arrays in the file
        out = {}
        for key, a in arrays.items():
            if key.startswith(prefix):
                layer = key[len(prefix):].split(".")[0]
                out[layer] = out.get(layer, 0) + a.size
        return out

    params, stats = counts("params/"), counts("buffers/")
    assert {r["name"]: r["parameters"] for r in info["layers"] if r["parameters"]} == params
    assert {r["name"]: r["statistics"] for r in info["layers"] if r["statistics"]} == stats
    assert info["parameters"] == sum(params.values()) and info["statistics"] == sum(stats.values())
    assert (info["statistics"] > 0) == (batchnorm != "none")
    assert info["classes"] == CLASSES and info["preprocess"] == PREP and info["batchnorm"] == batchnorm
    assert info["bytes"] == path.stat().st_size

    text = _info(path)
    assert text.exit_code == 0
    assert f"total: {info['parameters']:,} trainable parameters" in text.output
    assert f"4: {', '.join(CLASSES)}" in text.output
    lines = text.output.splitlines()
    table = lines[next(i for i, ln in enumerate(lines) if ln.startswith("layer ")) + 1:]
    assert len(table) == len(info["layers"]) + 1   # a line per layer, then the total
    for row, line in zip(info["layers"], table):
        assert line.split()[0] == row["name"] and line.split()[-1] == f"{row['parameters']:,}"


def test_training_progress_is_the_saved_run_state(tmp_path):
    state = RunState(epoch=2, epoch_step=1, step=7, best_val_loss=2.6, stopped_early=True, history=HISTORY)
    run = tmp_path / "run"
    _save(run / "last.npz", "none", state, epochs=9)
    res = _info(run, "--json")                     # a run folder without best.npz: its last.npz
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["checkpoint"] == str(run / "last.npz")
    assert info["training"] == {"epoch": 2, "epoch_step": 1, "step": 7, "epochs": 9, "stopped_early": True,
                                "last_epoch": HISTORY[-1], "init_from": None, "weights_epoch": None, "came_from": []}
    text = _info(run).output
    assert "2 of 9 epochs and 1 step(s) of epoch 3 (7 steps), stopped early" in text
    assert "epoch 2: train loss 2.5000 acc 55.00%, val loss 2.6000 acc 50.00%" in text
    _save(run / "best.npz", "unit")                # a run folder prefers best.npz, as eval/predict do
    assert json.loads(_info(run, "--json").output)["batchnorm"] == "unit"


def test_no_validation_images_and_hostile_run_metadata_show_as_unknown(tmp_path):
    path = _save(tmp_path / "m.npz", "channel",
                 RunState(epoch=1, step=3, history=[dict(HISTORY[0], val_loss=math.nan, val_acc=math.nan)]))
    res = _info(path, "--json")
    assert res.exit_code == 0 and "NaN" not in res.output        # strict JSON
    assert json.loads(res.output)["training"]["last_epoch"]["val_loss"] is None
    assert "epoch 1: train loss 3.1000 acc 40.00%\n" in _info(path).output

    arrays, meta = checkpoint.load(path)
    meta.pop("format_version")
    meta.update(epoch="many", step=True, history=[5], config="train: [", stopped_early="yes",
                came_from=[{"checkpoint": "a/last.npz", "epoch": "2", "step": 4}, 7, {"checkpoint": "b/last.npz",
                                                                                     "epoch": 3, "step": 9},
                           {"checkpoint": "c/last.npz", "epoch": -1, "step": 2},
                           {"checkpoint": "d\nforged", "epoch": 1, "step": 1}])
    checkpoint.save(path, arrays, meta)
    res = _info(path, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["training"] == {"epoch": None, "epoch_step": 0, "step": None, "epochs": None,
                                                  "stopped_early": None, "last_epoch": None,
                                                  "init_from": None, "weights_epoch": None,
                                                  "came_from": [{"checkpoint": "b/last.npz", "epoch": 3, "step": 9},
                                                                {"checkpoint": "d\nforged", "epoch": 1, "step": 1}]}
    text = _info(path).output
    assert "resumed     from d\\nforged at epoch 1 (step 1)\n" in text and "\nforged" not in text
    assert "trained     unknown (no run state in the metadata)" in text and "recipe" not in text


def test_recipe_is_the_run_configs_own_settings_and_hostile_values_are_left_out(tmp_path):
    path = tmp_path / "m.npz"
    cfg = load_config(None, ["data.train=x", "optim.name=momentum", "optim.lr=0.05", "optim.schedule=step",
                             "optim.warmup_epochs=0", "optim.weight_decay=0.0005", "train.batch_size=48",
                             "train.seed=11", "augment.enabled=false", "train.class_weight={star: 2.5}"])
    net = model.Network(num_classes=len(CLASSES), batchnorm="none", seed=3)
    save_checkpoint(path, net, optim.Optimizer("sgd", net.params.flat.size, 1e-3), RunState(), cfg, CLASSES, PREP)
    res = _info(path, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["recipe"] == {
        "optim.name": "momentum", "optim.lr": 0.05, "optim.schedule": "step", "optim.warmup_epochs": 0.0,
        "optim.weight_decay": 0.0005, "train.batch_size": 48, "train.seed": 11,
        "train.class_weight": {"star": 2.5}, "augment.enabled": False, "augment.changed": []}
    assert ("recipe      momentum lr 0.05 step, weight decay 0.0005, batch 48, augmentation off, "
            "class weights star 2.5, seed 11\n") in _info(path).output

    arrays, meta = checkpoint.load(path)           # wrong types are unknown; a newline stays on its line
    meta.pop("format_version")
    meta["config"] = "optim: {name: \"adam\\nx\", lr: fast}\ntrain: {batch_size: 2.5, seed: true}\n"
    checkpoint.save(path, arrays, meta)
    info = json.loads(_info(path, "--json").output)
    assert info["recipe"]["optim.name"] == "adam\nx"
    assert [k for k, v in info["recipe"].items() if v is not None] == ["optim.name"]
    assert "recipe      adam\\nx\n" in _info(path).output


def test_the_recipe_names_the_augmentation_settings_away_from_their_defaults(tmp_path):
    # (a run with augment.affine.rotate=11 showed 'augmentation on', as a run with the defaults)
    path = tmp_path / "m.npz"
    cfg = load_config(None, ["data.train=x", "augment.affine.rotate=11", "augment.flip.horizontal=0.5",
                             "augment.affine.scale=[0.8, 1.2]"])
    net = model.Network(num_classes=len(CLASSES), batchnorm="none", seed=3)
    save_checkpoint(path, net, optim.Optimizer("adam", net.params.flat.size, 1e-3), RunState(), cfg, CLASSES, PREP)
    assert json.loads(_info(path, "--json").output)["recipe"]["augment.changed"] == [
        "affine.rotate 11", "affine.scale [0.8, 1.2]", "flip.horizontal 0.5"]
    assert "augmentation on (affine.rotate 11, affine.scale [0.8, 1.2], flip.horizontal 0.5)" in _info(path).output


@pytest.mark.parametrize("make, needle", [
    (lambda p: None, "no such checkpoint file"),
    (lambda p: p.write_bytes(b"not a zip"), "not a checkpoint"),
    (lambda p: p.mkdir(), "run folder has no best.npz or last.npz"),
    (lambda p: (p / "cat").mkdir(parents=True), "run folder has no best.npz or last.npz (it holds folders, no "
                                                "run's files: a data folder? give a run folder or a .npz file)"),
])
def test_broken_paths_are_one_line_errors(tmp_path, make, needle):
    path = tmp_path / "m.npz"
    make(path)
    res = _info(path)
    assert res.exit_code == 1 and needle in res.stderr and str(path) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_tampered_parameters_are_refused_naming_the_key(tmp_path):
    path = _save(tmp_path / "m.npz", "unit")
    arrays, meta = checkpoint.load(path)
    meta.pop("format_version")
    arrays["params/bn2.gamma"] = np.ones((16,), np.float32)
    checkpoint.save(path, arrays, meta)
    res = _info(path)
    assert res.exit_code == 1 and "params/bn2.gamma" in res.stderr and "Traceback" not in res.output


def test_info_never_imports_numba(tmp_path):
    path = _save(tmp_path / "m.npz", "unit")
    res, imported = run_cli_probing_numba(["info", path], tmp_path)
    assert "bn1" in res.stdout and not imported


def test_the_recipe_line_counts_warmup_epochs_in_words():
    from cnncli.summary import RECIPE, _recipe_line

    base = {key: None for key, _ in RECIPE}
    for w, text in ((1.0, "(warmup 1 epoch)"), (0.5, "(warmup 0.5 epochs)"), (2.0, "(warmup 2 epochs)")):
        r = {**base, "optim.name": "adam", "optim.lr": 1e-3, "optim.schedule": "cosine", "optim.warmup_epochs": w}
        assert _recipe_line(r).startswith(f"adam lr 0.001 cosine {text}")


def test_class_names_with_commas_are_quoted_in_the_list(tmp_path, monkeypatch):
    from cnncli.data.names import listed

    assert [listed(n) for n in ("cat", "cat, tabby", ' say "hi"', "café ☕")] == \
        ["cat", '"cat, tabby"', '" say "hi""', "café ☕"]
    monkeypatch.setattr(sys.modules[__name__], "CLASSES", ["bird", "cat, tabby", "dog"])
    path = _save(tmp_path / "m.npz", "none")
    assert 'classes     3: bird, "cat, tabby", dog\n' in _info(path).output
    # one name in two Unicode forms (two class folders macOS and Linux wrote): told apart, not "café, café"
    monkeypatch.setattr(sys.modules[__name__], "CLASSES", ["bird", "caf\u00e9", "cafe\u0301"])
    path = _save(tmp_path / "m2.npz", "none")
    assert "classes     3: bird, caf\\xe9, cafe\\u0301\n" in _info(path).output


def test_a_run_folder_shows_how_far_the_run_trained_and_which_epoch_best_holds(tmp_path):
    run = tmp_path / "run"
    more = HISTORY + [{**HISTORY[-1], "epoch": 3, "step": 9, "val_loss": 2.9}]
    _save(run / "best.npz", "none", RunState(epoch=2, step=6, best_val_loss=2.6, history=HISTORY), epochs=9)
    _save(run / "last.npz", "none", RunState(epoch=3, step=9, best_val_loss=2.6, stopped_early=True,
                                            history=more), epochs=9)
    info = json.loads(_info(run, "--json").output)
    assert info["checkpoint"] == str(run / "best.npz")              # its weights: the best epoch's
    assert (info["training"]["epoch"], info["training"]["stopped_early"]) == (3, True)   # the run: last.npz's
    assert info["best"]["epoch"] == 2 and info["best"]["last_epoch"] == HISTORY[-1]
    text = _info(run).output
    assert "trained     3 of 9 epochs (9 steps), stopped early" in text
    assert "weights     epoch 2's (the best, best.npz): train loss 2.5000 acc 55.00%, val loss 2.6000 acc 50.00%" \
        in text
    alone = json.loads(_info(run / "best.npz", "--json").output)    # the file itself: its own state
    assert alone["training"]["epoch"] == 2 and alone["best"] is None
    _save(run / "last.npz", "none", RunState(epoch=2, step=6, best_val_loss=2.6, history=HISTORY), epochs=9)
    assert "weights " not in _info(run).output                     # the last epoch was the best: one line
    (run / "last.npz").write_bytes(b"broken")                       # an unreadable last.npz: best's own
    assert json.loads(_info(run, "--json").output)["training"]["epoch"] == 2
    text = _info(run).output                                        # and it says so (it read as a whole run)
    assert "last.npz    unreadable, so this is best.npz's progress: " in text and str(run / "last.npz") in text


def test_resuming_a_run_whose_last_npz_is_damaged_points_to_its_best(tmp_path):
    from cnncli.cli import cli

    run = tmp_path / "run"
    _save(run / "best.npz", "none", RunState(epoch=2, step=6, best_val_loss=2.6, history=HISTORY), epochs=9)
    (run / "last.npz").write_bytes(b"broken")
    res = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    assert res.exit_code == 1
    assert res.stderr.strip().endswith(f"; the run's best.npz can go on from its epoch: cnn train --resume "
                                       f"{run / 'best.npz'}"), res.stderr
