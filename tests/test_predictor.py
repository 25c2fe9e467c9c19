"""Restoring a network from a checkpoint: exact round trip, and every tampered key refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cnncli import checkpoint, model, optim
from cnncli.cli import cli
from cnncli.config import load_config
from cnncli.errors import CheckpointError
from cnncli.predictor import Predictor
from cnncli.train import RunState, save_checkpoint

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


def test_round_trip_predicts_exactly_as_the_saved_network(ckpt):
    path, net, prep = ckpt
    p = Predictor.from_checkpoint(path)
    assert p.classes == CLASSES and p.preprocess == prep
    images = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32), dtype=np.uint8)
    x = ((images.astype(np.float64) / 255 - 0.25) / 0.5).astype(np.float32)[:, None]
    assert np.array_equal(p.predict_proba(images, batch_size=5), net.predict_proba(x).astype(np.float64))


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
    ],
)
def test_tampered_checkpoints_are_refused_naming_the_key(ckpt, arrays, meta, needle):
    path, _, _ = ckpt
    _tamper(path, arrays, meta)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        Predictor.from_checkpoint(path)
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(path), str(path)])
    assert res.exit_code == 1 and needle in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
