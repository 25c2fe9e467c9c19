"""`cnn runs`: the run folders under a folder, one row each, to compare experiments: how far each
trained, its best epoch's validation metrics and its set-up (batchnorm, optimizer, where its weights
started). NumPy only: it reads the checkpoints' metadata and never loads numba. Not the story of one
run (cnn info, cnn report).
"""

from __future__ import annotations

import datetime
import math
import os
import re
import textwrap
from pathlib import Path

from cnncli import checkpoint, textwidth
from cnncli.callbacks import loss_text
from cnncli.errors import CnnError
from cnncli.predictor import BEST_FIRST
from cnncli.runfolder import printable, read_diverged
from cnncli.runlock import training_now
from cnncli.summary import came_from, config_value, run_config

SORTS = ("name", "val_acc", "val_loss", "time")
DEPTH = 6      # folder levels searched below a root (runs/sweep/2026-12/lr1e-3/seed0 is 4 down)


NO_CHECKPOINT = "no checkpoint yet: stopped before its first save, or still starting"
# every row's keys (--json), None where a run has no value, and "error" on a row that has one;
# status: training (a process holds the folder now), finished, stopped early, diverged, incomplete
# (stopped or killed: `cnn train --resume` goes on), no checkpoint, unreadable
FIELDS = ("run", "status", "classes", "batchnorm", "optimizer", "lr", "epochs", "epochs_total", "stopped_early",
          "best_epoch", "monitor", "val_loss", "val_acc", "test_acc", "init_from", "resumed_from", "modified",
          "diverged", "no_checkpoint")


def is_run(folder: Path) -> bool:
    """A folder with a checkpoint, or a run's config.yaml without one (a cnn cv parent, which holds
    fold-k runs, is no run)."""
    if (folder / "last.npz").is_file() or (folder / "best.npz").is_file():
        return True
    return (folder / "config.yaml").is_file() and not (folder / "fold-1").is_dir()


def find_runs(roots) -> list:
    """Every run folder at or below each root (to DEPTH levels), in name order; a root that is no
    folder is a CnnError."""
    found = []
    for root in map(Path, roots):
        if root.exists() and not root.is_dir():
            tip = "; `cnn info` describes a checkpoint" if root.suffix.lower() == ".npz" else ""
            raise CnnError(f"{root}: is a file, not a folder of runs{tip}")
        if not root.is_dir():
            raise CnnError(f"{root}: no such folder")
        level = [root]
        for _ in range(DEPTH + 1):
            nxt = []
            for folder in level:
                if folder != root and folder.is_symlink() and _links_up(folder):
                    continue                 # (runs/x/up -> ..: read through every such link, ~n**4)
                if is_run(folder):
                    found.append(folder)
                    continue
                try:
                    nxt += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue         # unreadable: not a run we can list
            level = nxt
    runs, seen = [], set()
    for run in sorted(set(found)):              # a run reached twice (a symlink to its folder): listed once
        real = os.path.realpath(run)
        if real not in seen:
            seen.add(real)
            runs.append(run)
    return runs


def _links_up(link: Path) -> bool:
    """Whether the symlinked folder `link` is the folder it lies in or one above it."""
    target, here = os.path.realpath(link), os.path.realpath(link.parent)
    return here == target or here.startswith(os.path.join(target, ""))


def newest_run(root) -> Path | None:
    """The run folder at or below `root` with the checkpoint (best.npz or last.npz) written last, or
    None when there is none (or no such folder): what eval, predict and export default to."""
    newest, when = None, None
    for run in find_runs([root]) if Path(root).is_dir() else []:
        for name in BEST_FIRST:
            try:
                t = (run / name).stat().st_mtime
            except OSError:
                continue
            if when is None or t > when:
                newest, when = run, t
    return newest


def finished_cv(run: Path) -> Path | None:
    """The cnn cv folder whose fold `run` is (fold-k under a folder holding cv.json, which cnn cv
    writes once every fold has trained), else None."""
    from cnncli.crossval import SUMMARY

    if re.fullmatch(r"fold-\d+", run.name) and (run.parent / SUMMARY).is_file():
        return run.parent
    return None


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _test_accuracy(run: Path):
    """test_metrics.json's accuracy (data.test's, of best.npz), else None."""
    import json

    try:
        return _number(json.loads((run / "test_metrics.json").read_text(encoding="utf-8")).get("accuracy"))
    except (OSError, ValueError, AttributeError):
        return None


def describe_run(run: Path) -> dict:
    """One run's row (FIELDS); a run whose checkpoint cannot be read has an "error" and no metrics."""
    diverged = read_diverged(run)
    diverged = diverged.split(";")[0] if diverged else None     # "loss or gradients became non-finite at ..."
    row = {**dict.fromkeys(FIELDS), "run": os.fspath(run), "diverged": diverged, "no_checkpoint": False,
           "status": "training" if training_now(run) else None}
    last = run / "last.npz"
    if not last.is_file() and not (run / "best.npz").is_file():
        error = (f"diverged before its first save: {diverged}" if diverged else
                 "no checkpoint yet: training now, before its first save" if row["status"] else NO_CHECKPOINT)
        return {**row, "error": error, "no_checkpoint": True, "status": row["status"] or "no checkpoint"}
    try:
        meta = checkpoint.load_meta(last if last.is_file() else run / "best.npz")
        best_meta = checkpoint.load_meta(run / "best.npz") if (run / "best.npz").is_file() else None
    except CnnError as err:
        return {**row, "error": str(err), "status": row["status"] or "unreadable"}
    cfg = run_config(meta)
    best = ((best_meta or {}).get("history") or [None])[-1]
    best = best if isinstance(best, dict) else {}
    classes = meta.get("classes")
    row.update(
        classes=len(classes) if isinstance(classes, list) else None,
        batchnorm=meta.get("batchnorm") if isinstance(meta.get("batchnorm"), str) else None,
        optimizer=config_value(cfg, "optim.name"), lr=_number(config_value(cfg, "optim.lr")),
        epochs=_number(meta.get("epoch")), epochs_total=_number(config_value(cfg, "train.epochs")),
        stopped_early=meta.get("stopped_early") is True,
        best_epoch=_number(best.get("epoch")), val_loss=_number(best.get("val_loss")),
        val_acc=_number(best.get("val_acc")), init_from=config_value(cfg, "train.init_from"),
        modified=datetime.datetime.fromtimestamp((run / ("last.npz" if last.is_file() else "best.npz"))
                                                 .stat().st_mtime).isoformat(timespec="seconds"),
        monitor=config_value(cfg, "train.monitor"), test_acc=_test_accuracy(run),
        resumed_from=(came_from(meta) or [{}])[-1].get("checkpoint"),   # (--resume with --out)
    )
    done = row["epochs"] is not None and row["epochs_total"] is not None and row["epochs"] >= row["epochs_total"]
    row["status"] = row["status"] or ("diverged" if diverged else "stopped early" if row["stopped_early"] else
                                      "finished" if done else "incomplete")
    return row


def natural_key(name: str) -> list:
    """A sort key that orders the numbers in a name by value: fold-2 before fold-10, run-9 before run-10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def sort_rows(rows: list, by: str) -> list:
    """Rows in `by` order: name (numbers by value, natural_key); val_acc (highest first); val_loss
    (lowest first); time (newest first). Rows without the value (and unreadable runs) go last, in
    name order."""
    if by not in SORTS:
        raise CnnError(f"--sort must be one of {', '.join(SORTS)}, got {by!r}")
    rows = sorted(rows, key=lambda r: natural_key(r["run"]))
    if by == "name":
        return rows
    key = {"val_acc": lambda r: -r["val_acc"], "val_loss": lambda r: r["val_loss"],
           "time": lambda r: -datetime.datetime.fromisoformat(r["modified"]).timestamp()}[by]
    field = "modified" if by == "time" else by
    have = [r for r in rows if r.get(field) is not None]
    return sorted(have, key=key) + [r for r in rows if r.get(field) is None]


def _optim_text(r: dict) -> str:
    # the optim column: "adam 0.003"
    return f"{r['optimizer'] or '-'} {r['lr']:g}" if r["lr"] is not None else (r["optimizer"] or "-")


def format_runs(rows: list, columns: int | None = None) -> str:
    """The table `cnn runs` prints; when a row is wider than `columns` (textwidth.terminal_columns),
    each run as its name and its values, labelled, on lines of at most `columns` instead."""
    if not rows:
        return "no run folders found"
    optims = [_optim_text(r) for r in rows if "error" not in r]
    wide = max([13, *map(len, optims)])              # (momentum 0.0067 pushed the later columns out of line)
    head = f"{'run':32s} {'classes':>7s} {'bn':7s} {'optim':{wide}s} {'epochs':>9s} {'best':>4s} " \
           f"{'val loss':>9s} {'val acc':>7s} {'test acc':>8s}  started from"
    table = [_run_cells(r) for r in rows]
    lines = [head] + [_table_row(cells, wide) for cells in table]
    if columns and max(map(textwidth.width, lines)) > columns:
        lines = [line for cells in table for line in _run_lines(cells, columns)]
    notes = []
    if any(r.get("status") == "training" for r in rows):
        notes.append("~ training now (a cnn process holds the folder)")
    if any(r.get("stopped_early") for r in rows):
        notes.append("* stopped early")
    if any(r.get("diverged") and "error" not in r for r in rows):
        notes.append("! diverged: its loss or gradients became non-finite (diverged.txt in the run folder); "
                     "the checkpoint holds its last good state")
    if columns:                                      # (wrapped at a word, as the rows are)
        notes = [part for note in notes for part in textwrap.wrap(note, columns, subsequent_indent="  ")]
    return "\n".join(lines + notes)


RUN_FIELDS = ("classes", "bn", "optim", "epochs", "best", "val loss", "val acc", "test acc", "started from")


def _run_cells(r: dict) -> tuple:
    """(run name, error or None, the RUN_FIELDS values as text) of a row of cnn runs."""
    name = printable(r["run"])
    if "error" in r:
        return name, ("" if r.get("no_checkpoint") else "unreadable: ") + printable(r["error"]), ()
    done = "-" if r["epochs"] is None else str(r["epochs"])
    total = f"/{r['epochs_total']}" if r["epochs_total"] is not None else ""
    epochs = done + total + ("*" if r["stopped_early"] else "") + ("!" if r["diverged"] else "") + (
        "~" if r.get("status") == "training" else "")
    loss = loss_text(r["val_loss"]) if r["val_loss"] is not None else "-"
    acc = f"{r['val_acc']:.2%}" if r["val_acc"] is not None else "-"
    test = f"{r['test_acc']:.2%}" if r.get("test_acc") is not None else "-"
    start = r.get("resumed_from") or r["init_from"]       # (this folder's first weights)
    start = printable(start) if isinstance(start, str) else "-"
    return name, None, (str(r["classes"] or "-"), r["batchnorm"] or "-", _optim_text(r), epochs,
                        str(r["best_epoch"] or "-"), loss, acc, test, start)


def _table_row(cells: tuple, wide: int) -> str:
    # one line of the table: the run's name, then its values under the heads (or its error)
    name, error, v = cells
    if error is not None:
        return f"{textwidth.ljust(name, 32)} {error}"
    return f"{textwidth.ljust(name, 32)} {v[0]:>7s} {v[1]:7s} {v[2]:{wide}s} {v[3]:>9s} {v[4]:>4s} {v[5]:>9s} " \
           f"{v[6]:>7s} {v[7]:>8s}  {v[8]}"


def _run_lines(cells: tuple, columns: int) -> list[str]:
    """A run for a narrow terminal: its name, then 'field value' pairs indented, as many to a line as
    fit in `columns` (a pair wider than that on a line of its own), or its error wrapped at words."""
    name, error, values = cells
    if error is not None:
        return [name] + textwrap.wrap(error, columns, initial_indent="  ", subsequent_indent="  ",
                                      break_long_words=False, break_on_hyphens=False)
    pairs = [f"{k} {v}" for k, v in zip(RUN_FIELDS, values)]
    lines = [name, "  " + pairs[0]]
    for pair in pairs[1:]:
        if textwidth.width(lines[-1]) + 2 + textwidth.width(pair) <= columns:
            lines[-1] += ", " + pair
        else:
            lines.append("  " + pair)
    return lines
