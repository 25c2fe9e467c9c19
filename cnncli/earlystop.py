"""Early stopping and the best epoch: whether an epoch improves on the best so far (train.monitor,
min_delta, patience), the plateau schedule's drops replayed from the history, and the line naming the
best epoch and its best.npz. It does not save checkpoints nor stop the loop (trainer.py does).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from cnncli import runfolder
from cnncli.callbacks import loss_text
from cnncli.runfolder import RunState


class EarlyStopping:
    """Best-so-far tracking and patience over train.monitor: the validation loss (lower is better) or
    accuracy (higher; an equal accuracy with a lower loss also counts as better when min_delta is 0), or the epoch's
    training loss/accuracy when the run has no validation images (the README's "No validation
    images" rule). min_delta is in the monitored metric's units."""

    def __init__(self, es_cfg: dict, have_val: bool, monitor: str = "val_loss"):
        self.patience, self.min_delta = es_cfg["patience"], es_cfg["min_delta"]
        self.restore_best = es_cfg["restore_best"]
        side = "val" if have_val else "train"
        self.loss_key, self.acc_key = f"{side}_loss", f"{side}_acc"
        self.by_accuracy = monitor == "val_acc"
        self.monitor = self.acc_key if self.by_accuracy else self.loss_key

    def better(self, state: RunState, row: dict) -> bool:
        """Whether the epoch's row improves on the best so far (state.best_val_loss, state.best_acc)."""
        loss, acc = row[self.loss_key], row[self.acc_key]
        if not self.by_accuracy:
            return math.isfinite(loss) and loss < state.best_val_loss - self.min_delta
        if not math.isfinite(acc):
            return False
        if acc > state.best_acc + self.min_delta:
            return True
        # a tie: better with a lower loss, unless min_delta asks for a change of accuracy (a tie is none)
        return self.min_delta == 0 and acc == state.best_acc and math.isfinite(loss) and loss < state.best_val_loss

    def update(self, state: RunState, row: dict) -> tuple[bool, bool]:
        """-> (improved, stop now); updates best_val_loss (the best epoch's loss), best_acc (its
        accuracy, when monitoring accuracy), bad_epochs and stopped_early in `state`."""
        improved = self.better(state, row)
        if improved:
            state.best_val_loss, state.bad_epochs = row[self.loss_key], 0
            if self.by_accuracy:
                state.best_acc = row[self.acc_key]
        else:
            state.bad_epochs += 1
        stopping = self.patience > 0 and state.bad_epochs >= self.patience
        state.stopped_early = stopping
        return improved, stopping

    def best_row(self, state: RunState, history: list) -> dict | None:
        """The history row of the epoch that set the best so far (best.npz's): the first with its
        values, as a later epoch that only equals them did not improve on them."""
        return next((row for row in history if row.get(self.loss_key) == state.best_val_loss
                     and (not self.by_accuracy or row.get(self.acc_key) == state.best_acc)), None)


def plateau_drops(early: EarlyStopping, history: list, patience: int) -> int:
    """How many times ReduceLROnPlateau (Keras' rule: a drop once `patience` epochs in a row did not
    improve on the best, then the count starts again; min_delta 0) drops the rate over the finished
    epochs' rows, replayed from the start, so a resumed run gets the same count from its history.
    Improvement is judged as `early` judges it (train.monitor, val or train metrics)."""
    judge = copy.copy(early)                 # the same metric and rule, min_delta 0
    judge.min_delta = 0.0
    state, drops, wait = RunState(), 0, 0
    for row in history:
        improved, _ = judge.update(state, row)
        wait = 0 if improved else wait + 1
        if wait >= patience:
            drops, wait = drops + 1, 0
    return drops


def best_note(early: EarlyStopping, state: RunState, best_path: Path, restored: bool) -> str:
    """The run's end line's (and early stopping's) words on its best epoch: the monitored metric, the
    epoch that set it with its other metric, and best.npz (restored: its weights went into last.npz)."""
    what = early.monitor.replace("_", " ")                       # "val loss", "train acc", ...
    if not best_path.exists():
        return f"no epoch had a finite {what}, so there is no best.npz"
    into = " (restored into last.npz)" if restored else ""
    row = early.best_row(state, state.history)
    if early.by_accuracy:
        best = f"{state.best_acc:.2%}"
        at = (f" (epoch {row['epoch']}, {early.loss_key.replace('_', ' ')} "
              f"{loss_text(row[early.loss_key])})" if row else "")
    else:
        best = loss_text(state.best_val_loss)            # the epoch that set the best: its accuracy
        at = f" (epoch {row['epoch']}, {early.acc_key.replace('_', ' ')} {row[early.acc_key]:.2%})" if row else ""
    return f"best {what} {best}{at} is in {runfolder.printable(str(best_path))}{into}"
