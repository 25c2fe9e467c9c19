"""The network learns: a few epochs through `cnn train` on generated shapes reach well above chance on
held-out images that `cnn eval` reads from another folder; the same run with the training labels
shuffled (a broken image/label pairing) stays below that threshold, so the threshold can tell."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cnncli import runsetup
from cnncli.cli import cli
from e2e_util import make_folder, write_config

LEARNED = 0.85   # well above chance (1/3); the shuffled run reaches 0.53 here, the real one 1.0


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("learn")
    return tmp, make_folder(tmp / "train", per_class=40, odd_files=False), \
        make_folder(tmp / "test", per_class=15, seed=1, odd_files=False)


def _train_and_eval(tmp, train_dir, test_dir, name):
    cfg = write_config(tmp / f"{name}.yaml", train_dir, tmp / name, epochs=4, batch_size=8)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "-q", "--no-report"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["eval", "--checkpoint", str(tmp / name), "--data", str(test_dir), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["accuracy"]


def test_a_few_epochs_learn_the_shapes(folders):
    tmp, train_dir, test_dir = folders
    assert _train_and_eval(tmp, train_dir, test_dir, "good") >= LEARNED


def test_shuffled_labels_do_not_reach_the_threshold(folders, monkeypatch):
    tmp, train_dir, test_dir = folders
    real = runsetup.load_datasets

    def shuffled(*args, **kwargs):
        train_ds, val_ds, skipped = real(*args, **kwargs)
        np.random.default_rng(0).shuffle(train_ds.labels)   # images keep their order, labels do not
        return train_ds, val_ds, skipped

    monkeypatch.setattr(runsetup, "load_datasets", shuffled)      # where train() loads its data
    assert _train_and_eval(tmp, train_dir, test_dir, "shuffled") < LEARNED
