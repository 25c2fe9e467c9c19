"""What `cnn train --resume` may and may not change, checked before any data is loaded.

A checkpoint's meaning (architecture, preprocessing, the classes, how the current epoch's images are
drawn, the optimizer's state) is fixed; everything else (epochs, patience, lr, threads, out...) applies.
This module compares configs and resolves paths; it does not load data or build networks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from cnncli import config as config_mod
from cnncli.config_text import show
from cnncli.errors import CheckpointError, CnnError, ConfigError

# Keys that cannot change on --resume, and why (the README's "Resuming" section names them all;
# tests/test_docs.py checks it).
FROZEN = {
    "data.image_size": "the network's input",
    "data.resize": "the preprocessing the weights were trained with",
    "data.normalize": "the preprocessing the weights were trained with",
    "data.val_split": "which images are held out for validation",
    "data.seed": "which images are held out for validation",
    "data.folds": "which images are held out for validation",
    "data.fold": "which images are held out for validation",
    "train.batch_size": "the learning-rate schedule and the current epoch's batches",
    "train.seed": "the order of the current epoch's images",
    "train.monitor": "what best.npz holds and early stopping compares",
    "optim.name": "the optimizer state stored in the checkpoint",
}
FROZEN.update({o.key: "the network's architecture" for o in config_mod.OPTIONS if o.key.startswith("model.")})
SPLIT_KEYS = ("data.val_split", "data.seed")   # the split of data.train, drawn only when data.val is none


class NothingToDo(Exception):
    """A resumed run with no epoch left: its line (str) and run folder, found before any data is read."""

    def __init__(self, line: str, run_dir):
        super().__init__(line)
        self.run_dir = run_dir


def nothing_to_do(state, epochs: int) -> str | None:
    """The line for a run that has nothing left to train (all `epochs` done, or early stopping ended it
    and nothing was raised since), else None."""
    if state.epoch < epochs and not state.stopped_early:
        return None
    if state.epoch > epochs:                        # (the run stopped before its own total; --set lowered it)
        return (f"Nothing to do: train.epochs {epochs} is below the {state.epoch} epoch(s) the run has already "
                f"done (raise it above {state.epoch} to continue).")
    why = "early stopping ended it; raise train.epochs or train.early_stopping.patience" \
        if state.stopped_early else "raise train.epochs"
    return f"Nothing to do: the run already completed {state.epoch} epoch(s) ({why} to continue)."


def resumed_config(resume, overrides=(), config_files=()) -> dict:
    """The config stored in the checkpoint `resume` (a file, or a run folder's last.npz), with the
    --config files' keys laid over it, then the --set overrides: what `cnn train --resume` runs.
    Reads the metadata only (the run's setup loads and checks the whole file)."""
    from cnncli import checkpoint
    from cnncli.predictor import run_checkpoint

    path = run_checkpoint(resume)
    with best_instead(path):
        meta = checkpoint.load_meta(path)
    checkpoint.check_run_meta(path, meta)
    check_resumable(path, meta, resume)
    cfg = config_mod.load_layers([(meta.get("config", ""), f"{resume} (config)", None)]
                                 + config_mod.file_layers(config_files), overrides)
    check_unchanged(meta.get("config", ""), cfg, path, meta.get("num_classes"))   # (--print-config's refusal too)
    # (--print-config shows the epochs the resume trains)
    return resolved_epochs(cfg, config_mod.load_config_text(meta.get("config", ""), source=f"{path} (config)"))


def resolved_epochs(cfg: dict, saved: dict) -> dict:
    """cfg, with the number of epochs the run resolved when it started (saved: its config) when cfg says
    train.epochs: auto again: a resume keeps that number."""
    if cfg["train"]["epochs"] == "auto" and saved["train"]["epochs"] != "auto":
        return {**cfg, "train": {**cfg["train"], "epochs": saved["train"]["epochs"]}}
    return cfg


def check_resumable(path, meta: dict, resume) -> None:
    """CheckpointError when `meta` describes a model without its run (predictor.save_model's file: no
    config, optimizer state or epochs), which --resume cannot continue: --init-from can start from it."""
    from cnncli.checkpoint import model_only

    if model_only(meta):
        raise CheckpointError(f"{path}: holds a model without its run (no config, optimizer state or epochs; "
                              f"predictor.save_model writes such files), so --resume cannot continue it; "
                              f"start a new run from its weights with --init-from {resume}")


def check_unchanged(saved_text: str, cfg: dict, ckpt_path, num_classes=None) -> None:
    """ConfigError naming the first frozen key whose value differs between the checkpoint's config and `cfg`.
    model.num_classes left to the data (null) in the run's config matches the checkpoint's own
    num_classes, when given, as well as null."""
    saved = config_mod.load_config_text(saved_text or "", source=f"{ckpt_path} (config)")
    val_then, val_now = saved["data"]["val"], cfg["data"]["val"]
    # a switch between a folder and a split of data.train: refused when that split holds images out (a
    # split now would validate on trained images; the run's split left images out that would now train)
    split = (cfg if val_now is None else saved)["data"]
    holds_out = split["val_split"] > 0 or split["folds"] >= 2
    if (val_then is None) != (val_now is None) and holds_out:
        raise ConfigError(f"data.val cannot change on --resume between a folder and none (which images are held out "
                          f"for validation: the run trained on the others): {ckpt_path} has "
                          f"{_yaml(val_then)}, the config now says {_yaml(val_now)}; start a new run instead")
    for key, why in FROZEN.items():
        if key in SPLIT_KEYS and val_now is not None or key == "data.val_split" and cfg["data"]["folds"] >= 2:
            continue                                # (data.val or the folds name the validation images: no split)
        old, new = config_mod.get(saved, key), config_mod.get(cfg, key)
        inferred = key == "model.num_classes" and old is None and num_classes is not None
        if inferred and new == num_classes:
            continue                   # (the value the data gave the run, now set: the same network)
        if old != new:
            has = f"{num_classes} (from its data)" if inferred else repr(old)
            raise ConfigError(f"{key} cannot change on --resume ({why}): {ckpt_path} has {has}, "
                              f"the config now says {new!r}; start a new run instead")


def _yaml(value) -> str:
    # a config value as a message shows it: null, true and false as YAML writes them, else show()'s form
    return {True: "true", False: "false", None: "null"}[value] if value is None or isinstance(value, bool) \
        else show(value)


def changed_settings(saved: dict, cfg: dict, shown: int = 6) -> list:
    """[a note naming the settings (but `out`) a resume changes, each with its old and new value], or []:
    `cnn info` shows the run's settings as they are now (augmentation off after 40 epochs with it on)."""
    from cnncli.options import LEAVES

    diffs = [(k, config_mod.get(saved, k), config_mod.get(cfg, k)) for k in LEAVES if k != "out"]
    diffs = [f"{k} {_yaml(a)} -> {_yaml(b)}" for k, a, b in diffs if a != b]
    if not diffs:
        return []
    more = f", and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return [f"this resume changes {', '.join(diffs[:shown])}{more} (for the steps from here on)"]


def absolute_paths(cfg: dict, start_dir=None) -> dict:
    """`cfg` with data.train, data.val, data.test and train.init_from made absolute against `start_dir`
    (default: the working folder), so the config saved in the run folder resumes from any working
    directory; `out` with a leading ~ expanded (made absolute once the run has its folder)."""
    start = Path(start_dir or os.getcwd())
    d = dict(cfg["data"])
    for key in ("train", "val", "test"):
        if d[key]:
            d[key] = os.path.normpath(start / Path(d[key]).expanduser())
    t = dict(cfg["train"])
    if t.get("init_from"):
        t["init_from"] = os.path.normpath(start / Path(t["init_from"]).expanduser())
    out = cfg.get("out")
    return {**cfg, "data": d, "train": t, "out": os.path.expanduser(out) if isinstance(out, str) else out}


def should_continue(state, saved_cfg: dict, cfg: dict) -> bool:
    """Whether a run that early stopping ended has something to do: only when train.epochs or
    train.early_stopping.patience was raised. Raising epochs alone starts a fresh patience window."""
    if not state.stopped_early:
        return True
    old_p, new_p = (config_mod.get(c, "train.early_stopping.patience") for c in (saved_cfg, cfg))
    old_e, new_e = (config_mod.get(c, "train.epochs") for c in (saved_cfg, cfg))
    if new_p > old_p or new_p == 0:
        return True
    if new_e > old_e:
        state.bad_epochs = 0
        return True
    return False


@contextlib.contextmanager
def best_instead(path: Path):
    """Around reading the checkpoint to resume: a damaged last.npz's CheckpointError names the run's
    best.npz, which may be whole, to go on from."""
    try:
        yield
    except CheckpointError as err:
        best = path.parent / "best.npz"
        if path.name != "last.npz" or not best.is_file():
            raise
        raise CheckpointError(f"{err}; the run's best.npz can go on from its epoch: cnn train --resume {best}") \
            from None


def carry_best(src_dir: Path, run_dir: Path) -> None:
    """Resuming into another folder: copy the source run's best.npz there, so the new folder is whole
    and every message names a file that exists, and its TensorBoard event files, so the new folder's
    curves start at epoch 1 as its metrics.csv does."""
    from cnncli.atomic import why_unwritten, write_atomic

    if src_dir.resolve() == run_dir.resolve():
        return
    events = sorted(p.name for p in src_dir.glob("events.out.tfevents.*") if p.is_file())
    for name in ["best.npz"] * (src_dir / "best.npz").is_file() + events:
        src, dst = src_dir / name, run_dir / name
        if dst.exists():
            continue
        try:
            with open(src, "rb") as f:
                write_atomic(dst, lambda out: shutil.copyfileobj(f, out))   # (no temporary file left behind)
        except OSError as err:           # (a full disk: one line, as a checkpoint's save says it)
            raise CheckpointError(f"{dst}: cannot copy the run's {name} there ({why_unwritten(err, dst)}); "
                                  "nothing was trained yet") from None


def in_its_run_folder(ckpt_path: Path, saved: dict) -> bool:
    """Whether the checkpoint's folder is its run's: it is that folder's last.npz or best.npz, or
    a copy (an epoch kept aside) beside a last.npz or best.npz of the same run (the same `out`)."""
    real = Path(os.path.realpath(ckpt_path))
    if real.name in ("last.npz", "best.npz"):
        return True
    from cnncli import checkpoint

    for name in ("last.npz", "best.npz"):
        try:
            meta = checkpoint.load_meta(real.parent / name)
            theirs = config_mod.load_config_text(meta.get("config", ""), source=name)["out"]
        except (CnnError, OSError):
            continue
        return theirs == saved["out"]
    return False
