"""The Python API as a notebook user meets it: read-only inputs (np.load's mmap_mode='r',
np.frombuffer) train as writable ones do, an optimizer refuses read-only parameters before it counts
a step, Augmenter calls return arrays of their own, a Predictor's `network` trains the weights both
of its paths read, save_model refuses a string of classes, a checkpoint without .npz in its name is
still predict's model, eval of a save_model file without --data says why. Each test fails on the
behaviour before it (numba's TypingError, a reused buffer, two copies of the weights...)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnncli import model
from cnncli.augment import Augmenter, AugmentSettings
from cnncli.cli import cli
from cnncli.optim import Optimizer
from cnncli.predictor import Predictor, save_model


def _batch(n=16, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 32, 32)).astype(dtype), np.arange(n) % 4


@pytest.mark.parametrize("batchnorm", ["none", "unit"])
def test_train_step_takes_a_read_only_input(batchnorm):
    x, y = _batch()
    frozen = x.copy()
    frozen.flags.writeable = False
    a = model.Network(num_classes=4, batchnorm=batchnorm, seed=0)
    b = model.Network(num_classes=4, batchnorm=batchnorm, seed=0)
    la, pa = a.train_step(x, y)
    lb, pb = b.train_step(frozen, y)
    assert la == lb and np.array_equal(pa, pb) and np.array_equal(a.grads.flat, b.grads.flat)


def test_loss_and_grads_takes_a_read_only_input():
    x, y = _batch(8, np.float64)
    params = model.init_params(num_classes=4, batchnorm="channel", seed=0, dtype=np.float64)
    frozen = x.copy()
    frozen.flags.writeable = False
    la, ga = model.loss_and_grads(params, x, y, batchnorm="channel")
    lb, gb = model.loss_and_grads(params, frozen, y, batchnorm="channel")
    assert la == lb and np.array_equal(ga.flat, gb.flat)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_optimizer_refuses_read_only_parameters_before_counting_a_step(name):
    p = np.zeros(10, np.float32)
    p.flags.writeable = False
    opt = Optimizer(name, 10, lr=0.1)
    with pytest.raises(ValueError, match="params_flat is read-only"):
        opt.step(p, np.ones(10, np.float32))
    assert opt.t == 0


def test_augmenter_calls_return_arrays_of_their_own():
    x, _ = _batch(8)
    aug = Augmenter(AugmentSettings(affine_p=1.0, shift=3.0, rotate=20.0), seed=0, pixel_std=1.0)
    first = aug(x, 0, 0)
    kept = first.copy()
    second = aug(x, 0, 1)
    assert not np.shares_memory(first, second)
    assert np.array_equal(first, kept) and not np.array_equal(first, second)
    assert np.array_equal(aug(x, 0, 0), kept)          # the same (epoch, step): the same pixels


def test_a_predictors_network_trains_the_weights_both_paths_read(tmp_path):
    path = save_model(tmp_path / "m.npz", model.Network(num_classes=4, seed=0), list("abcd"))
    p = Predictor.from_checkpoint(path)
    images = (np.random.default_rng(1).random((6, 32, 32)) * 255).astype(np.uint8)
    before = p.predict_proba(images, fast=False)
    x, y = _batch()
    net = p.network
    for _ in range(3):
        net.train_step(x, y)
        net.params.flat -= 0.5 * net.grads.flat
    slow, fast = p.predict_proba(images, fast=False), p.predict_proba(images, fast=True)
    assert not np.allclose(slow, before)
    np.testing.assert_allclose(slow, fast, rtol=0, atol=1e-5)


def test_save_model_refuses_a_string_of_classes(tmp_path):
    with pytest.raises(ValueError, match="got a string 'abcd'"):
        save_model(tmp_path / "m.npz", model.Network(num_classes=4, seed=0), "abcd")


def test_a_checkpoint_named_without_npz_is_predicts_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "plain.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    (tmp_path / "plain.npz").rename(tmp_path / "noext")
    save_model(tmp_path / "runs" / "other" / "best.npz", model.Network(num_classes=2, seed=1), ["x", "y"])
    Image.new("L", (32, 32), 90).save(tmp_path / "one.png")
    res = CliRunner().invoke(cli, ["predict", "noext", "one.png", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "runs/other" not in res.output and '"class": "' in res.output


def test_eval_of_a_model_without_its_run_asks_for_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    path = save_model(tmp_path / "m.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    res = CliRunner().invoke(cli, ["eval", str(path)], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert "holds a model without its run" in res.output and "pass --data" in res.output


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_pickled_or_copied_network_trains_its_own_weights(how):
    # unpickled, the named views were arrays of their own: Adam stepped .flat and the loss never moved;
    # copy.deepcopy raised KeyError "'conv1.w' is not a parameter of this network (it has )"
    import copy
    import pickle

    x, y = _batch()
    fresh = model.Network(num_classes=4, seed=3)
    fresh.train_step(x, y)                                     # (plans built before the copy)
    net = pickle.loads(pickle.dumps(fresh)) if how == "pickle" else copy.deepcopy(fresh)
    assert np.shares_memory(net.params["fc1.w"], net.params.flat) and np.shares_memory(net.grads["fc2.b"],
                                                                                        net.grads.flat)
    assert not np.shares_memory(net.params.flat, fresh.params.flat)
    opt = Optimizer("adam", net.params.flat.size, 1e-3)
    losses = []
    for _ in range(4):
        loss, _ = net.train_step(x, y)
        opt.step(net.params.flat, net.grads.flat)
        losses.append(loss)
    assert losses[-1] < losses[0] - 0.05, losses
    params = model.init_params(4)
    twin = copy.deepcopy(params)
    assert np.array_equal(twin.flat, params.flat) and np.shares_memory(twin["conv1.w"], twin.flat)


def test_loss_and_grads_takes_transposed_strided_and_read_only_parameters():
    # fc1.w given as a transposed copy (Keras' kernel.T): numba's own TypeError, naming no parameter
    x, y = _batch(8, np.float64)
    params = model.init_params(4, dtype=np.float64)
    loss, grads = model.loss_and_grads(params, x, y)
    odd = dict(params)
    odd["fc1.w"] = np.asfortranarray(params["fc1.w"])
    odd["conv1.w"] = np.repeat(params["conv1.w"], 2, axis=0)[::2]                     # strided
    odd["fc2.b"] = params["fc2.b"].copy()
    odd["fc2.b"].flags.writeable = False
    loss2, grads2 = model.loss_and_grads(odd, x, y)
    assert loss2 == loss and np.array_equal(grads2.flat, grads.flat)
    assert np.array_equal(model.predict_proba(odd, x), model.predict_proba(params, x))


def test_forward_loss_refuses_labels_outside_the_classes():
    # (y + 100 gave a loss, silently: an out-of-range label read memory past the outputs)
    x, y = _batch()
    net = model.Network(num_classes=4)
    assert np.isfinite(net.forward_loss(x, y))
    for bad in (y + 100, -y - 1):
        with pytest.raises(ValueError, match=r"labels \(shape \(16,\)\) has values outside \[0, 4\)"):
            net.forward_loss(x, bad)


def test_optimizer_and_augmenter_arguments_get_errors_that_name_them():
    # Optimizer("adam", 2.5, ...) took 2 parameters; a dict of settings gave AttributeError 'vector'
    with pytest.raises(ValueError, match=r"size: must be an integer >= 0 \(params.flat.size\), got 2.5"):
        Optimizer("adam", 2.5, 0.1)
    with pytest.raises(ValueError, match=r"momentum: must be a number >= 0, got 'fast'"):
        Optimizer("momentum", 4, 0.1, momentum="fast")
    with pytest.raises(ValueError, match=r"betas: must be two numbers in \[0, 1\), got \(0.9,\)"):
        Optimizer("adam", 4, 0.1, betas=(0.9,))
    with pytest.raises(TypeError, match=r"settings must be an AugmentSettings, e.g. AugmentSettings\(rotate=10.0\)"):
        Augmenter({"rotate": 10}, 0)
