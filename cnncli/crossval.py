"""K-fold cross-validation (`cnn cv`), as Ludwig's `experiment --k_fold`: one training run per fold of
data.train (data.folds, data.fold), each an ordinary run folder under one parent, then every fold's
best epoch and the mean and standard deviation of their validation metrics, in cv.json.
Not a hyperparameter search. Under mpirun each fold trains data-parallel on every rank.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from cnncli import checkpoint
from cnncli import config as config_mod
from cnncli import runfolder, runlock, warmstart
from cnncli.callbacks import SetupStopped, StopInCrossValidation, drop_hand_off, loss_text
from cnncli.errors import CnnError, ConfigError, Stopped, main_only
from cnncli.lifeline import ENDING, stops_held

SUMMARY = "cv.json"
METRICS = ("val_loss", "val_acc", "test_loss", "test_acc")


def fold_config(cfg: dict, folds: int, k: int, parent: Path) -> dict:
    """The config of fold k (0-based): fold k of `folds` held out, its run folder parent/fold-<k+1>."""
    data = {**cfg["data"], "folds": folds, "fold": k}
    return {**cfg, "data": data, "out": str(parent / f"fold-{k + 1}")}


def check(cfg: dict, folds: int) -> None:
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {folds}")
    if cfg["data"]["val"]:
        raise ConfigError(f"cnn cv holds out folds of data.train, so data.val must be null (it is "
                          f"{cfg['data']['val']!r}; add --set data.val=null)")


def check_images(cfg: dict, folds: int) -> list:
    """Refuse more folds than data.train has files (indexed, not decoded; as scikit-learn's KFold
    does): a fold would hold no validation image -> [a note naming the classes with fewer files than
    folds]. A folder that cannot be indexed yet (the demo's, before it is generated) is left to the
    first fold's set-up, which checks the usable images."""
    import numpy as np

    from cnncli.data.dataset import index

    try:
        ix = index(cfg["data"]["train"])[0]
    except (CnnError, OSError):
        return []
    n = len(ix.rels)
    if folds > n:
        raise ConfigError(f"--folds {folds} is more than the {n} image(s) of data.train "
                          f"({runfolder.printable(cfg['data']['train'])}): a fold would hold no validation "
                          f"image; use at most {n}")
    counts = np.bincount(ix.labels, minlength=len(ix.classes))
    small = [f"{runfolder.printable(c)} ({k})" for c, k in zip(ix.classes, counts) if k < folds]
    if not small:
        return []
    return [f"note: fewer images than the {folds} folds: {', '.join(small[:5])}{', ...' if len(small) > 5 else ''}; "
            "some folds validate on no image of such a class, and a fold that holds out a class's only image "
            "trains without it"]


def fold_result(run_dir: Path, k: int) -> dict:
    """Fold k's row: its best epoch (best.npz's last history row) and how far the run went."""
    row = {"fold": k + 1, "run": str(run_dir)}
    _, last = checkpoint.load(run_dir / "last.npz")
    row["epochs_run"] = int(last.get("epoch", 0))
    best_path = run_dir / "best.npz"
    if best_path.exists():
        _, meta = checkpoint.load(best_path)
        best = (meta.get("history") or [{}])[-1]
        row.update(best_epoch=best.get("epoch"), val_loss=best.get("val_loss"), val_acc=best.get("val_acc"),
                   train_loss=best.get("train_loss"), train_acc=best.get("train_acc"))
    test = run_dir / "test_metrics.json"
    if test.is_file():                      # data.test: the fold's own evaluation of it
        metrics = json.loads(test.read_text(encoding="utf-8"))
        row.update(test_loss=metrics.get("loss"), test_acc=metrics.get("accuracy"))
    return row


def finished(last: Path) -> bool:
    """Whether the run that wrote `last` trained all its epochs or was ended by early stopping."""
    meta = checkpoint.load_meta(last)       # (a finished fold's files are loaded whole by fold_result)
    checkpoint.check_run_meta(last, meta)
    state = runfolder.state_from_meta(meta, last)
    epochs = config_mod.load_config_text(meta.get("config", ""), source=f"{last} (config)")["train"]["epochs"]
    return state.stopped_early or (epochs != "auto" and state.epoch >= epochs)


def summarize(rows: list) -> dict:
    """Mean and standard deviation (numpy's np.std: of the K values, ddof 0) of each metric over the folds
    that have it."""
    out = {}
    for key in METRICS:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if vals:
            mean = sum(vals) / len(vals)
            out[key] = {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)),
                        "folds": len(vals)}
    return out


def _open_parent(resume, cfg: dict, folds: int, out) -> tuple:
    """(parent, cfg, folds, notes): a resumed cv folder's, or a new parent folder with the base config."""
    from cnncli.resume import absolute_paths

    if resume is not None:
        parent = Path(resume)
        cfg_path = parent / "config.yaml"
        if not cfg_path.is_file():
            raise CnnError(f"{parent}: not a cnn cv folder (no config.yaml)")
        cfg = config_mod.load_config(cfg_path)
        if cfg["data"]["folds"] < 2 or any((parent / n).is_file() for n in ("last.npz", "best.npz")):
            up = parent.parent if parent.name not in ("", "..") else Path(os.path.abspath(parent)).parent   # (., ..)
            hint = f"cnn cv --resume {up}" if cfg["data"]["folds"] >= 2 else f"cnn train --resume {parent}"
            raise CnnError(runfolder.printable(f"{parent}: a run folder, not a cnn cv folder (the folder of its "
                                               f"fold-k runs); continue it with: {hint}"))
        return parent, cfg, cfg["data"]["folds"], []
    cfg = absolute_paths(cfg)
    check(cfg, folds)
    warmstart.open_source(cfg)          # (train.init_from: its error before the cv's folder and fold 1's line)
    target, what = out or f"{cfg['out']}-cv", "--out" if out else "`out`"
    runfolder.check_utf8_name(target, "--out" if out else "out")
    runfolder.refuse_unfit(target, cfg["data"], what)           # (before any image is read)
    notes = check_images(cfg, folds)
    parent = runfolder.new_run_dir(target, what)
    base = {**cfg, "data": {**cfg["data"], "folds": folds, "fold": 0}, "out": str(parent)}
    try:
        runfolder.atomic_text(parent / "config.yaml", config_mod.dump(base))
    except CnnError:                    # (a full disk: the new folder's name goes back)
        runlock.release(parent)
        raise
    return parent, cfg, folds, notes


def _prepare_fold(fold_dir: Path) -> str:
    """'finished', 'resume' (it has a checkpoint) or 'new' (a folder without one is removed)."""
    if (fold_dir / "last.npz").is_file():
        return "finished" if finished(fold_dir / "last.npz") else "resume"
    if fold_dir.exists():
        theirs = runfolder.foreign_entries(fold_dir)
        if theirs:                           # (a folder of the user's named fold-1: never removed)
            raise CnnError(runfolder.printable(f"{fold_dir}: holds files no fold's run wrote ({', '.join(theirs)}); "
                                               "move them out, or give cnn cv another folder"))
        shutil.rmtree(fold_dir)              # started, no checkpoint yet: nothing to keep
    return "new"


def cross_validate(cfg: dict, folds: int, out=None, resume=None, quiet=False, echo=print,
                   comm=None) -> tuple[Path, dict | None]:
    """Train every fold (or, with `resume`, a cv folder: the folds not finished) -> (parent, summary).
    Under mpirun (`comm`) every fold trains data-parallel on all ranks, as `cnn train` does; rank 0
    makes the folders and writes the summary (the other ranks get None)."""
    from cnncli import train
    from cnncli.distributed import Comm, main_first

    comm = Comm() if comm is None else comm
    say = echo if comm.is_main else (lambda message: None)
    opening = StopInCrossValidation(None, "before the first fold")
    opening.hand_off = True                 # (to fold 1's own 'before fold 1' line)
    with opening:
        with stops_held():                  # (a stop as the cv's folder is made or read: this line's, once it is)
            parent, cfg, folds, notes = main_first(comm, _open_parent, resume, cfg, folds, out, others=False)
            opening.parent = parent
        say(f"Cross-validation: {folds} folds of {cfg['data']['train']} in {parent}")
        for note in notes:
            say(note)
    rows, said = [], False
    for k in range(folds):
        fold_dir = parent / f"fold-{k + 1}"
        say(f"-- fold {k + 1} of {folds}")
        with StopInCrossValidation(parent, f"before fold {k + 1}") as line:
            status = main_first(comm, _prepare_fold, fold_dir, others=False)
            # (hand_off: a stop before the next line, the fold's set-up's or its 'after fold' line, is theirs)
            line.hand_off = status != "finished" or comm.is_main
        if status == "finished":
            say(f"finished earlier: {fold_dir}")
        else:
            try:
                train.train(fold_config(cfg, folds, k, parent), resume=fold_dir if status == "resume" else None,
                            quiet=quiet, echo=echo, comm=comm, setting_notes=not said,   # (once, not once a fold)
                            hand_off=True)
                said = True
            except BaseException as err:
                drop_hand_off()           # (an error before the fold's set-up took it: the handlers as they were)
                if not isinstance(err, (CnnError, SystemExit)):  # (SystemExit: under mpirun, every rank's error)
                    raise
                if resume is None and comm.is_main and not any(parent.glob("fold-*/last.npz")):
                    (parent / "config.yaml").unlink(missing_ok=True)     # nothing trained: the name goes back
                    runlock.release(parent)
                    raise
                if isinstance(err, Stopped):    # Ctrl-C, SIGTERM, SIGUSR1: the folds so far are kept
                    raise _go_on(err, k, parent) from None
                raise
        if comm.is_main:                    # (hand_off: a stop before the next fold's line or the summary's is theirs)
            with StopInCrossValidation(parent, f"after fold {k + 1}") as line:
                line.hand_off = True
                rows.append(fold_result(fold_dir, k))
    if not comm.is_main:
        return parent, None
    # (rank 0's work alone: under mpirun its errors are the cv's); last: in cnn's own process the stops are
    # ignored from its end on, while the summary is printed and the process ends
    end = StopInCrossValidation(parent, "after the last fold, while writing its summary", alone=True)
    end.last = ENDING[0]
    with main_only(), end:
        return parent, _finish(cfg, folds, parent, rows, say)


def _finish(cfg: dict, folds: int, parent: Path, rows: list, say) -> dict:
    """After the folds: data.test's test (_test), then the summary, written -> the summary."""
    ensemble = None
    if cfg["data"]["test"]:
        with StopInCrossValidation(parent, "after the last fold, while testing on data.test", alone=True):
            ensemble = _test(cfg, folds, parent, rows, say)
    summary = {"folds": rows, "summary": summarize(rows), "config": str(parent / "config.yaml")}
    if ensemble is not None:
        summary["ensemble_test"] = ensemble
    try:
        runfolder.atomic_text(parent / SUMMARY, json.dumps(summary, indent=2) + "\n")
    except CnnError as err:
        if isinstance(err, Stopped):
            raise
        raise CnnError(f"{err}; the folds are saved: once it can be written, cnn cv --resume {parent} writes it") \
            from None
    return summary


def _go_on(err: Stopped, k: int, parent: Path) -> Stopped:
    """The stop err of fold k's run, its line ending in how to continue the cross-validation."""
    from cnncli.trainer import Interrupted

    if isinstance(err, SetupStopped):
        text = f"{err.signal}: stopped during fold {k + 1}'s set-up, before its first step;"
    else:                                   # (a step's stop says how to resume the fold's run: "or")
        text = f"{err};{' or' if isinstance(err, Interrupted) else ''}"
    more = type(err)(f"{text} continue the cross-validation with: cnn cv --resume {parent}")
    more.everywhere = getattr(err, "everywhere", False)     # (every rank stops at the same step)
    more.alone = getattr(err, "alone", False)               # (rank 0's test after the fold's training)
    more.anywhere = getattr(err, "anywhere", False)         # (a set-up stop: wherever each rank is)
    return more


def _test(cfg: dict, folds: int, parent: Path, rows: list, say) -> dict:
    """data.test: each fold's row gets its test metrics (a fold stopped while testing, then resumed, is
    tested now) -> the folds' ensemble's (ensemble.py)."""
    from cnncli import train
    from cnncli.evaluate import evaluate

    for k, row in enumerate(rows):
        if "test_acc" not in row:
            train.evaluate_test_data(Path(row["run"]), fold_config(cfg, folds, k, parent), say)
            rows[k] = fold_result(Path(row["run"]), k)
    metrics, _, _ = evaluate([str(parent)], cfg["data"]["test"], cache=cfg["data"]["cache"])
    return {"loss": metrics["loss"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "num_images": metrics["num_images"]}


def format_summary(parent: Path, summary: dict) -> str:
    """The table `cnn cv` prints: one row per fold, then mean +- std."""
    def pct(v):
        return f"{v:.2%}" if isinstance(v, (int, float)) else "-"

    def num(v):
        return loss_text(v) if isinstance(v, (int, float)) else "-"
    s = summary["summary"]
    test = "test_acc" in s
    lines = [f"{'fold':>4}  {'epochs':>6}  {'best':>4}  {'val loss':>9}  {'val acc':>7}"
             + (f"  {'test acc':>8}" if test else "")]
    for r in summary["folds"]:
        lines.append(f"{r['fold']:>4}  {r['epochs_run']:>6}  {r.get('best_epoch') or '-':>4}  "
                     f"{num(r.get('val_loss')):>9}  {pct(r.get('val_acc')):>7}"
                     + (f"  {pct(r.get('test_acc')):>8}" if test else ""))
    if "val_acc" in s:
        lines.append(f"val acc  {s['val_acc']['mean']:.2%} +- {s['val_acc']['std']:.2%}, val loss "
                     f"{loss_text(s['val_loss']['mean'])} +- {loss_text(s['val_loss']['std'])} (mean +- std over "
                     f"{s['val_acc']['folds']} folds, each at its best epoch)")
    if test:
        lines.append(f"test acc {s['test_acc']['mean']:.2%} +- {s['test_acc']['std']:.2%} over the folds; "
                     f"their ensemble {summary['ensemble_test']['accuracy']:.2%} "
                     f"({summary['ensemble_test']['num_images']} images of data.test)")
    lines.append(f"Summary: {parent / SUMMARY}")
    return "\n".join(lines)
