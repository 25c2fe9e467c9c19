"""train.monitor: val_loss or val_acc picks best.npz and drives early stopping and the plateau
schedule. The rules on rows (accuracy ties broken by the lower loss, min_delta, no validation images;
plateau drops), then real runs: best.npz is the epoch metrics.csv says, the end line names it, the
plateau schedule's rates in metrics.csv follow its rule, a resumed run keeps the best so far and
the drops, and train.monitor cannot change on --resume.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from cnncli.callbacks import loss_text
from cnncli.earlystop import EarlyStopping, best_note, plateau_drops
from cnncli.optim import lr_at
from cnncli.checkpoint import load as load_checkpoint
from cnncli.runfolder import RunState
from e2e_util import invoke, load_params, make_folder, private_cache, write_config  # noqa: F401

ES = {"patience": 2, "min_delta": 0.0, "restore_best": True}


def rows(pairs, side="val"):
    return [{"epoch": i + 1, f"{side}_loss": loss, f"{side}_acc": acc} for i, (loss, acc) in enumerate(pairs)]


def run_rule(monitor, history, es=ES, have_val=True):
    early, state = EarlyStopping(es, have_val=have_val, monitor=monitor), RunState()
    marks = []
    for row in history:
        improved, stopping = early.update(state, row)
        marks.append("*" if improved else ("stop" if stopping else "."))
        if stopping:
            break
    return marks, state


HISTORY = [(1.0, 0.50), (0.8, 0.50), (0.9, 0.70), (0.7, 0.60), (0.95, 0.70), (1.2, 0.70), (0.6, 0.65)]


def test_loss_and_accuracy_pick_different_epochs():
    marks, state = run_rule("val_loss", rows(HISTORY), es={**ES, "patience": 0})
    assert marks == ["*", "*", ".", "*", ".", ".", "*"] and state.best_val_loss == 0.6
    marks, state = run_rule("val_acc", rows(HISTORY), es={**ES, "patience": 0})
    # epoch 2: same accuracy, lower loss -> better; epoch 5: same accuracy as 3, higher loss -> not
    assert marks == ["*", "*", "*", ".", ".", ".", "."]
    assert (state.best_acc, state.best_val_loss, state.bad_epochs) == (0.70, 0.9, 4)


def test_patience_min_delta_and_no_validation_images():
    marks, state = run_rule("val_acc", rows(HISTORY))
    assert marks == ["*", "*", "*", ".", "stop"] and state.stopped_early
    marks, _ = run_rule("val_acc", rows(HISTORY), es={**ES, "patience": 0, "min_delta": 0.25})
    assert marks == ["*", ".", ".", ".", ".", ".", "."]      # +0.2 is below min_delta, and a tie is no change of
    # accuracy (epoch 2's equal accuracy at a lower loss moved best.npz and reset the patience; a helper's run)
    marks, state = run_rule("val_acc", rows(HISTORY, side="train"), es={**ES, "patience": 0}, have_val=False)
    assert marks == ["*", "*", "*", ".", ".", ".", "."] and state.best_acc == 0.70   # the training metrics
    marks, state = run_rule("val_acc", rows([(math.nan, math.nan), (0.5, 0.4)]))
    assert marks == [".", "*"] and state.best_acc == 0.4


def metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor")
    folder = make_folder(tmp / "data", per_class=12, odd_files=False)
    classes = sorted(p.name for p in folder.iterdir())
    for i, name in enumerate(classes):           # mislabel a third of each class: accuracy moves between epochs
        for f in sorted((folder / name).iterdir())[:4]:
            f.rename(folder / classes[(i + 1) % 3] / f"moved-{f.name}")
    return tmp, folder


def test_best_npz_is_the_most_accurate_epoch_and_a_resume_keeps_it(data, tmp_path):
    tmp, folder = data
    sets = ["--set", "train.monitor=val_acc", "--set", "train.early_stopping.patience=3", "-q", "--no-report",
            "--set", "optim.schedule=constant", "--set", "optim.warmup_epochs=0"]   # the same lr at any train.epochs
    full = write_config(tmp_path / "full.yaml", folder, tmp_path / "full", epochs=6)
    res = invoke(["train", "--config", full, *sets])
    assert res.exit_code == 0, res.output
    table = metrics(tmp_path / "full")
    best = max(table, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"])))      # first such epoch
    best = next(r for r in table if (r["val_acc"], r["val_loss"]) == (best["val_acc"], best["val_loss"]))
    by_loss = min(table, key=lambda r: float(r["val_loss"]))
    assert by_loss["epoch"] != best["epoch"]        # this data tells the two monitors apart
    _, meta = load_checkpoint(tmp_path / "full" / "best.npz")
    assert meta["epoch"] == int(best["epoch"])
    assert meta["best_acc"] == float(best["val_acc"]) and meta["best_val_loss"] == float(best["val_loss"])
    assert (f"Best val acc {float(best['val_acc']):.2%} (epoch {best['epoch']}, val loss "
            f"{float(best['val_loss']):.4f})") in res.output

    part = write_config(tmp_path / "part.yaml", folder, tmp_path / "part", epochs=2)
    assert invoke(["train", "--config", part, *sets]).exit_code == 0
    res = invoke(["train", "--resume", tmp_path / "part", "--set", "train.epochs=6", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    for name in ("last.npz", "best.npz"):
        a, b = load_params(tmp_path / "full" / name), load_params(tmp_path / "part" / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    assert [r["val_acc"] for r in metrics(tmp_path / "part")] == [r["val_acc"] for r in table]

    res = invoke(["train", "--resume", tmp_path / "part", "--set", "train.monitor=val_loss", "-q"])
    assert res.exit_code == 2 and "train.monitor cannot change on --resume" in res.output


def test_the_end_line_names_the_epoch_that_set_the_best_not_a_later_tie(tmp_path):
    """A later epoch that only equals the best (saturated outputs give one val loss epoch after
    epoch) did not improve on it: best.npz holds the first, and the end line names it."""
    (tmp_path / "best.npz").write_bytes(b"")
    for monitor, pairs, want in (("val_loss", [(1.0, 0.5), (0.8, 0.6), (0.9, 0.6), (0.8, 0.7)], 2),
                                 ("val_acc", [(1.0, 0.5), (0.8, 0.6), (0.9, 0.6), (0.8, 0.7)], 4),
                                 ("val_acc", [(0.9, 0.6), (0.7, 0.6), (0.7, 0.6), (0.8, 0.5)], 2)):
        history = rows(pairs)
        marks, state = run_rule(monitor, history, es={**ES, "patience": 0})
        state.history = history
        assert marks[want - 1] == "*" and "*" not in marks[want:]
        early = EarlyStopping(ES, have_val=True, monitor=monitor)
        assert early.best_row(state, history)["epoch"] == want
        assert f"(epoch {want}, " in best_note(early, state, tmp_path / "best.npz", False), (monitor, pairs)


def test_plateau_drops_replay_keras_rule():
    early = EarlyStopping(ES, have_val=True, monitor="val_loss")
    # val loss 1.0 .8 .9 .7 .95 1.2 .6: bad epochs 3 (1), 5, 6 (2 in a row) -> drops after 6 with patience 2
    assert [plateau_drops(early, rows(HISTORY[:n]), 2) for n in range(1, 8)] == [0, 0, 0, 0, 0, 1, 1]
    assert plateau_drops(early, rows(HISTORY), 1) == 3                  # epochs 3, 5, 6
    by_acc = EarlyStopping(ES, have_val=True, monitor="val_acc")
    assert plateau_drops(by_acc, rows(HISTORY), 2) == 2                 # acc: 4, 5 bad -> 1; 6, 7 bad -> 2
    no_val = EarlyStopping(ES, have_val=False, monitor="val_loss")
    assert plateau_drops(no_val, rows(HISTORY, side="train"), 1) == 3   # the training loss instead


def test_plateau_rates():
    assert lr_at(7, 4, 10, 0.1, "plateau") == 0.1
    assert lr_at(7, 4, 10, 0.1, "plateau", gamma=0.5, drops=2) == pytest.approx(0.025)
    assert lr_at(7, 4, 10, 0.1, "plateau", gamma=0.1, drops=3, min_lr=0.001) == 0.001      # the floor
    assert lr_at(1, 4, 10, 0.1, "plateau", warmup_epochs=1, drops=1) == pytest.approx(0.01 * 2 / 4)


def test_plateau_run_lowers_the_rate_as_its_history_says_and_resumes_bitwise(data, tmp_path):
    tmp, folder = data
    sets = ["--set", "optim.schedule=plateau", "--set", "optim.plateau_patience=1", "--set", "optim.gamma=0.5",
            "--set", "train.early_stopping.patience=0", "--set", "optim.warmup_epochs=0", "-q", "--no-report"]
    full = write_config(tmp_path / "full.yaml", folder, tmp_path / "full", epochs=8)
    res = invoke(["train", "--config", full, *sets])
    assert res.exit_code == 0, res.output
    table = metrics(tmp_path / "full")
    early = EarlyStopping(ES, have_val=True, monitor="val_loss")
    history = [{k: float(v) for k, v in r.items()} for r in table]
    for i, r in enumerate(table):            # each epoch's rate: 0.003 x 0.5 ** (drops over the epochs before)
        assert float(r["lr"]) == pytest.approx(0.003 * 0.5 ** plateau_drops(early, history[:i], 1), rel=1e-12)
    drops = plateau_drops(early, history, 1)
    assert 1 <= drops < 8                                # the data makes both kinds of epoch
    announced = plateau_drops(early, history[:-1], 1)     # a drop after the last epoch has no next step
    assert res.output.count("Plateau: val loss did not improve for 1 epoch(s)") == announced
    lines = res.output.splitlines()
    assert not lines[next(i for i, ln in enumerate(lines) if ln.startswith("Done in")) - 1].startswith("Plateau:")
    part = write_config(tmp_path / "part.yaml", folder, tmp_path / "part", epochs=3)
    assert invoke(["train", "--config", part, *sets]).exit_code == 0
    res = invoke(["train", "--resume", tmp_path / "part", "--set", "train.epochs=8", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    a, b = load_params(tmp_path / "full" / "last.npz"), load_params(tmp_path / "part" / "last.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [r["lr"] for r in metrics(tmp_path / "part")] == [r["lr"] for r in table]


def test_loss_text_keeps_tiny_losses_visible():
    # a tiny set trained 400 epochs reaches val losses near 1e-5: 4 decimals would print 0.0000
    assert loss_text(1.0031930e-05) == "1.003e-05" and loss_text(0.25) == "0.2500"
    assert loss_text(0.0) == "0.0000" and loss_text(2.5) == "2.5000" and loss_text(float("nan")) == "nan"
    for x in np.logspace(-9, 1, 41):
        assert float(loss_text(x)) != 0 and abs(float(loss_text(x)) - x) <= max(5e-5, 5e-4 * x)
