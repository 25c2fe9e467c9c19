"""Restoring a network from a checkpoint: exact round trip, every tampered key refused by name,
the NumPy path for small calls (numba never imported by a one-image `cnn predict`)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnncli import checkpoint, model, optim, predictor
from cnncli.cli import cli
from cnncli.config import load_config
from cnncli.errors import CheckpointError
from cnncli.predictor import Predictor
from cnncli.train import RunState, save_checkpoint
from e2e_util import cli_env

CLASSES = ["a", "b", "c"]


@pytest.fixture()
def ckpt(tmp_path):
    cfg = load_config(None, ["model.batchnorm=channel", "data.train=x"])
    net = model.Network(num_classes=3, batchnorm="channel", seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 32, 32)).astype(np.float32)
    net.train_step(x, np.array([0, 1, 2, 0, 1, 2]))  # running stats move away from (0, 1)
    opt = optim.Optimizer("adam", net.params.flat.size, 1e-3)
    prep = {"image_size": 32, "resize": "pad", "mean": 0.25, "std": 0.5}
    path = tmp_path / "m.npz"
    save_checkpoint(path, net, opt, RunState(), cfg, CLASSES, prep)
    return path, net, prep


def _inputs(n, seed=1):
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32), dtype=np.uint8)
    return images, ((images.astype(np.float64) / 255 - 0.25) / 0.5).astype(np.float32)[:, None]


def test_round_trip_predicts_exactly_as_the_saved_network(ckpt):
    path, net, prep = ckpt
    p = Predictor.from_checkpoint(path)
    assert p.classes == CLASSES and p.preprocess == prep
    images, x = _inputs(5)
    assert np.array_equal(p.predict_proba(images, batch_size=5, fast=True), net.predict_proba(x).astype(np.float64))


def test_small_calls_use_the_numpy_path_and_agree_with_the_network(ckpt):
    path, net, _ = ckpt
    p = Predictor.from_checkpoint(path)
    images, x = _inputs(5)
    got = p.predict_proba(images, batch_size=2)
    assert p._network is None  # no numba Network was built for 5 images
    want = net.predict_proba(x).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(got, want)  # the numpy path really ran: float32 rounding differs
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert np.array_equal(p.predict_proba(images, batch_size=2, fast=False), got)


def test_bad_images_and_batch_sizes_are_value_errors_naming_them_and_a_run_folder_loads(ckpt, tmp_path):
    path, net, _ = ckpt
    p = Predictor.from_checkpoint(path)
    images, _ = _inputs(3)
    for bad, words in ((images.tolist(), "images_u8 must be a numpy array (N,32,32) uint8, got list"),
                       (np.zeros((3, 28, 28), np.uint8), "images_u8 must be (N,32,32) uint8 (data.load_image"),
                       (images.astype(np.float32), "got (3, 32, 32) float32")):
        with pytest.raises(ValueError, match=re.escape(words)):
            p.predict_proba(bad)
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=re.escape(f"batch_size must be an integer >= 1, got {size!r}")):
            p.predict_proba(images, batch_size=size)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.npz").write_bytes(path.read_bytes())          # a run folder, as the CLI takes it
    assert np.array_equal(Predictor.from_checkpoint(run).predict_proba(images), p.predict_proba(images))


def test_calls_above_the_threshold_build_the_network_once(ckpt, monkeypatch):
    path, net, _ = ckpt
    monkeypatch.setattr(predictor, "NUMPY_MAX_IMAGES", 3)
    p = Predictor.from_checkpoint(path)
    images, x = _inputs(4)
    p.predict_proba(images[:3])
    assert p._network is None
    assert np.array_equal(p.predict_proba(images), net.predict_proba(x).astype(np.float64))
    built = p._network
    assert built is not None and p.network is built
    assert np.array_equal(p.network.buffers.flat, net.buffers.flat)


# A `cnn predict` in a fresh process, run through cnncli.cli.main (which ends with os._exit after
# flushing): os._exit is wrapped to print whether numba was imported before the process ends.
_PROBE = r"""
import os, sys
import cnncli.cli, cnncli.predictor
if sys.argv[1] != "-":
    cnncli.predictor.NUMPY_MAX_IMAGES = int(sys.argv[1])
real_exit = os._exit
def probe(code):
    sys.stdout.flush()
    print(f"numba-imported={'numba' in sys.modules}", file=sys.stderr, flush=True)
    real_exit(code)
os._exit = probe
sys.argv = ["cnn", "predict", "--checkpoint", *sys.argv[2:]]
cnncli.cli.main()
probe(0)
"""


def _predict_probe(tmp_path, threshold, *args):
    res = subprocess.run([sys.executable, "-c", _PROBE, threshold, *map(str, args)], env=cli_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("numba-imported=") == 1, res.stderr
    return res.stdout, "numba-imported=True" in res.stderr


def test_one_image_cnn_predict_never_imports_numba(ckpt, tmp_path):
    path, _, _ = ckpt
    img = tmp_path / "one.png"
    Image.fromarray(_inputs(1)[0][0]).save(img)
    out, numba_loaded = _predict_probe(tmp_path, "-", path, img)
    assert out.startswith(f"{img}\t") and out.split("\t")[1] in CLASSES
    assert not numba_loaded
    # the probe does see numba when the call is made to take the fast path
    out_fast, numba_loaded = _predict_probe(tmp_path, "0", path, img)
    assert numba_loaded and out_fast.split("\t")[1] == out.split("\t")[1]


def _tamper(path, arrays=None, meta=None):
    a, m = checkpoint.load(path)
    if arrays:
        arrays(a)
    if meta:
        meta(m)
    m.pop("format_version", None)
    checkpoint.save(path, a, m)


@pytest.mark.parametrize(
    "arrays, meta, needle",
    [
        (lambda a: a.pop("params/conv2.b"), None, "params/conv2.b"),
        (lambda a: a.__setitem__("params/fc2.w", np.zeros((4, 65), np.float32)), None, "params/fc2.w"),
        (lambda a: a.__setitem__("buffers/bn1.running_var", np.ones(6, np.float64)), None, "buffers/bn1.running_var"),
        (lambda a: a.__setitem__("params/extra", np.zeros(1, np.float32)), None, "params/extra"),
        (None, lambda m: m.pop("classes"), "classes"),
        (None, lambda m: m.__setitem__("batchnorm", "layer"), "batchnorm"),
        (None, lambda m: m.__setitem__("classes", ["a", "b"]), "classes"),
        (None, lambda m: m["preprocess"].__setitem__("std", 0), "std"),
        # (cnn predict ended in a traceback on 28x28 input; resize zoom failed on every file)
        (None, lambda m: m["preprocess"].__setitem__("image_size", 28), "'preprocess.image_size' is 28, but the "
                                                                         "network takes 32x32 images"),
        (None, lambda m: m["preprocess"].__setitem__("resize", "zoom"), "'preprocess.resize' is 'zoom'"),
        (None, lambda m: m.__setitem__("classes", [m["classes"][0]] * len(m["classes"])), "distinct names"),
    ],
)
def test_tampered_checkpoints_are_refused_naming_the_key(ckpt, arrays, meta, needle):
    path, _, _ = ckpt
    _tamper(path, arrays, meta)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        Predictor.from_checkpoint(path)
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(path), str(path.parent / "any.png")])
    assert res.exit_code == 1 and needle in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_eval_and_predict_of_weights_that_overflow_say_so_without_numpy_noise(ckpt, tmp_path):
    # finite but huge weights (a run that diverged): NaN outputs; eval said `loss nan` under numpy's
    # own RuntimeWarnings (file paths and source lines)
    path, _, _ = ckpt

    def huge(a):
        for k in ("params/conv1.w", "params/conv2.w", "params/fc1.w", "params/fc2.w"):
            a[k] = a[k] * np.float32(1e30)
    _tamper(path, huge)
    for c in CLASSES:
        (tmp_path / "data" / c).mkdir(parents=True)
        for i, img in enumerate(_inputs(2, seed=len(c) + ord(c))[0]):
            Image.fromarray(img).save(tmp_path / "data" / c / f"{i}.png")
    res = CliRunner().invoke(cli, ["eval", "--checkpoint", str(path), "--data", str(tmp_path / "data"), "--no-cache"])
    assert "RuntimeWarning" not in res.output and "Traceback" not in res.output, res.output
    assert "warning: the model's outputs are not finite for 6 of 6 image(s): its weights overflow (did its " \
        "training diverge?)" in res.stderr, res.stderr
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(path), str(tmp_path / "data")])
    assert "RuntimeWarning" not in res.output and "Traceback" not in res.output, res.output
    assert "warning: the model's outputs are not finite for 6 of 6 image(s): its weights overflow (did its " \
        "training diverge?)" in res.stderr, res.stderr


def test_a_network_trained_from_python_saves_a_checkpoint_every_command_reads(tmp_path):
    # the only way was runfolder.save_checkpoint with a whole config (whose recipe then misdescribed the run)
    import json

    from PIL import Image

    from cnncli import model, optim
    from cnncli.predictor import save_model

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 32, 32), dtype=np.uint8)                 # (N,32,32)
    mean, std = 0.4, 0.3
    x = ((pixels / 255.0 - mean) / std).astype(np.float32)[:, None]             # (N,1,32,32)
    labels = np.arange(16) % 3
    net = model.Network(num_classes=3, batchnorm="channel", seed=0)
    opt = optim.Optimizer("adam", net.params.flat.size, 1e-3)
    for _ in range(2):
        net.train_step(x, labels)
        opt.step(net.params.flat, net.grads.flat)
    path = save_model(tmp_path / "mine.npz", net, ["a", "b", "c"], mean=mean, std=std)
    p = Predictor.from_checkpoint(path)
    assert p.classes == ["a", "b", "c"]
    np.testing.assert_allclose(p.predict_proba(pixels), net.predict_proba(x), rtol=0, atol=1e-5)
    Image.fromarray(pixels[4]).save(tmp_path / "four.png")
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(path), str(tmp_path / "four.png"), "--json"])
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.stdout)
    assert row["class"] == "abc"[int(np.argmax(net.predict_proba(x[4:5])))]
    info = CliRunner().invoke(cli, ["info", str(path)])
    assert info.exit_code == 0 and "Traceback" not in info.output, info.output
    # --resume: the file has no run to continue (it said "data.train is not set", or, with data, that
    # the metadata lacks 'best_val_loss')
    (tmp_path / "d" / "a").mkdir(parents=True)
    for extra in ([], ["--set", f"data.train={tmp_path / 'd'}"], ["--config", str(tmp_path / "c.yaml")]):
        (tmp_path / "c.yaml").write_text(f"data:\n  train: {tmp_path / 'd'}\n")
        res = CliRunner().invoke(cli, ["train", "--resume", str(path), *extra])
        assert res.exit_code == 1 and res.stderr == (
            f"Error: {path}: holds a model without its run (no config, optimizer state or epochs; "
            "predictor.save_model writes such files), so --resume cannot continue it; start a new run from its "
            f"weights with --init-from {path}\n"), (extra, res.stderr)
    with pytest.raises(ValueError, match="classes must be 3 distinct non-empty names"):
        save_model(tmp_path / "x.npz", net, ["a", "a", "c"])
    with pytest.raises(ValueError, match="net must be a cnncli.model.Network, got object"):
        save_model(tmp_path / "x.npz", object(), ["a", "b", "c"])
    with pytest.raises(ValueError, match="mean and std must be numbers, got mean='a'"):
        save_model(tmp_path / "x.npz", net, ["a", "b", "c"], mean="a")
    net.params["fc2.b"] = [np.nan, 0, 0]                    # every reader refuses such a file: refused when saved
    with pytest.raises(ValueError, match="params 'fc2.b' hold NaN or inf"):
        save_model(tmp_path / "x.npz", net, ["a", "b", "c"])
    assert not (tmp_path / "x.npz").exists()
