"""Augmentation inside training: training batches are augmented (drawn from train.seed, epoch, step),
validation, eval and predict are not, kill/resume stays bitwise exact with it on, and
train.epochs=auto is resolved once, printed, saved in config.yaml and kept on --resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from cnncli import config
from cnncli.cli import cli
from cnncli.evaluate import evaluate
from e2e_util import load_params, make_folder, private_cache, write_config  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("augtrain")
    return make_folder(root / "train", per_class=10, odd_files=False), make_folder(root / "val", per_class=4, seed=1,
                                                                                   odd_files=False)


def invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def train(cfg, *extra):
    return invoke("train", "--config", cfg, "-q", "--no-report", "--set", "train.threads=2", *extra)


def _same(a, b):
    pa, pb = load_params(a), load_params(b)
    assert pa.keys() == pb.keys()
    return all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_training_batches_are_augmented_and_validation_is_not(data, tmp_path):
    from cnncli import runsetup, train as train_mod
    from cnncli.kernels import lookup_batch

    train_dir, val_dir = data
    cfg = write_config(tmp_path / "c.yaml", train_dir, tmp_path / "run", epochs=1)
    train(cfg, "--set", f"data.val={val_dir}", "--set", "train.early_stopping.restore_best=false")
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    # the val loss/accuracy the trainer logged (with augmentation on) are cnn eval's on the same weights
    metrics, _, _ = evaluate(tmp_path / "run" / "last.npz", val_dir, cache=False)
    assert float(row["val_loss"]) == pytest.approx(metrics["loss"], rel=1e-6)
    assert float(row["val_acc"]) == pytest.approx(metrics["accuracy"], abs=1e-12)
    # ... while a training batch is transformed, and only when augment.enabled
    seen = {}
    for enabled in (True, False):
        c = config.load_config(cfg, [f"augment.enabled={str(enabled).lower()}"])
        c = config.resolve_epochs(c, 100)
        t_ds, v_ds, _ = train_mod.load_datasets(c, progress=False)
        net, opt, pre = runsetup.build(c, t_ds, None)
        tr = train_mod.Trainer(c, tmp_path / "x", net, opt, train_mod.RunState(), t_ds, v_ds, t_ds.classes, pre,
                               print, True)
        idx = np.arange(8)
        plain = lookup_batch(t_ds.images, idx, tr.table)
        seen[enabled] = (tr.batch_input(idx).copy(), plain)
        tr.state.epoch_step = 1
        seen[enabled] += (tr.batch_input(idx).copy(),)
        # the step's shards make that same input themselves (lookup + augmentation in their tasks)
        x_seen, (x, transform) = tr.batch_input(idx), tr.step_input(idx)
        ref = runsetup.build(c, t_ds, None)[0]
        assert x is None and transform is not None
        want, got = ref.train_step(x_seen, t_ds.labels[idx]), net.train_step(x, t_ds.labels[idx], transform=transform)
        assert want[0] == got[0] and np.array_equal(want[1], got[1]) and np.array_equal(ref.grads.flat, net.grads.flat)
    aug0, plain, aug1 = seen[True]
    assert not np.array_equal(aug0, plain) and not np.array_equal(aug0, aug1)   # differs per step
    assert np.array_equal(seen[False][0], plain) and np.array_equal(seen[False][2], plain)


def test_augmented_run_resumed_after_epochs_and_mid_epoch_is_bitwise_identical(data, tmp_path):
    train_dir, _ = data
    ref = write_config(tmp_path / "ref.yaml", train_dir, tmp_path / "ref", epochs=3, checkpoint_every=0)
    train(ref)
    assert "augment:\n  # " in (tmp_path / "ref" / "config.yaml").read_text()
    assert config.load_config(tmp_path / "ref" / "config.yaml")["augment"]["enabled"] is True
    # stop after 2 epochs, resume to 3 (a constant schedule: cosine's curve depends on train.epochs)
    const = ("--set", "optim.schedule=constant")
    train(ref, *const, "--out", tmp_path / "ref_const")
    two = write_config(tmp_path / "two.yaml", train_dir, tmp_path / "two", epochs=2)
    train(two, *const)
    invoke("train", "--resume", tmp_path / "two", "-q", "--no-report", "--set", "train.epochs=3")
    assert _same(tmp_path / "ref_const" / "last.npz", tmp_path / "two" / "last.npz")
    # a mid-epoch stop: SIGINT after step 2 (of 3) of epoch 2 saves last.npz there (exit 130), then resume
    import signal
    from cnncli import checkpoint, train as train_mod
    mid = write_config(tmp_path / "mid.yaml", train_dir, tmp_path / "mid", epochs=3)
    step = train_mod.Trainer.train_step

    def step_then_stop(self, idx):
        step(self, idx)
        if self.state.epoch == 1 and self.state.epoch_step == 2:
            signal.raise_signal(signal.SIGINT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod.Trainer, "train_step", step_then_stop)
        res = CliRunner().invoke(cli, ["train", "--config", str(mid), "-q", "--no-report", "--set", "train.threads=2"])
    assert res.exit_code == 130, res.output
    meta = checkpoint.load(tmp_path / "mid" / "last.npz")[1]
    assert (meta["epoch"], meta["epoch_step"]) == (1, 2)
    invoke("train", "--resume", tmp_path / "mid", "-q", "--no-report")
    assert _same(tmp_path / "ref" / "last.npz", tmp_path / "mid" / "last.npz")
    # the same run without augmentation ends elsewhere: the test can see augmentation
    off = write_config(tmp_path / "off.yaml", train_dir, tmp_path / "off", epochs=3)
    train(off, "--set", "augment.enabled=false")
    assert not _same(tmp_path / "ref" / "last.npz", tmp_path / "off" / "last.npz")


def test_auto_epochs_are_printed_saved_and_kept_on_resume(data, tmp_path):
    train_dir, _ = data
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  train: {train_dir}\n  val_split: 0.25\ntrain:\n  batch_size: 8\n"
                   f"  early_stopping:\n    patience: 1\nout: {tmp_path / 'run'}\n")
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--no-report", "--set", "train.threads=2",
                                   "--set", "optim.lr=0.0000001"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = config.load_config(tmp_path / "run" / "config.yaml")
    epochs = saved["train"]["epochs"]
    assert isinstance(epochs, int) and f"Epochs: {epochs} (train.epochs=auto" in res.output
    assert epochs == config.auto_epochs(int(res.output.split("Training on ")[1].split()[0]), 8)
    # resume with the original config (still saying auto): the saved value stays, nothing restarts
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--resume", str(tmp_path / "run"), "--no-report",
                                   "--set", "train.early_stopping.patience=2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"Epochs: {epochs};" in res.output or "Nothing to do" in res.output


def test_print_config_of_a_resume_whose_config_says_auto_shows_the_runs_epochs(data, tmp_path):
    # a --config (or --set) saying train.epochs: auto over a resumed run keeps the run's resolved number,
    # and --print-config shows that number, not 'auto' (it showed auto while the resume trained 2)
    train_dir, _ = data
    cfg = write_config(tmp_path / "c.yaml", train_dir, tmp_path / "run", epochs=2)
    train(cfg)
    auto = tmp_path / "auto.yaml"
    auto.write_text("train:\n  epochs: auto\n")
    for extra in (["--set", "train.epochs=auto"], ["--config", auto]):
        printed = invoke("train", "--resume", tmp_path / "run", *extra, "--print-config").stdout
        printed = config.load_config_text(printed)
        assert printed["train"]["epochs"] == 2, extra
        res = invoke("train", "--resume", tmp_path / "run", *extra, "-q", "--no-report")
        assert "Nothing to do: the run already completed 2 epoch(s)" in res.output and "changes" not in res.output
