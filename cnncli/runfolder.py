"""The run folder: its atomic creation, what a run writes there (metrics.csv, skipped.txt, checkpoints)
and the run state every checkpoint carries so that a resume continues bit for bit.

It writes files and nothing else: the order of events is trainer.py's, the maths model/optim's.
"""

from __future__ import annotations

import csv
import io
import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cnncli import __version__, checkpoint
from cnncli import config as config_mod
from cnncli.atomic import ROOM, why_unwritten, write_atomic, write_failed
from cnncli.errors import CheckpointError, CnnError, ConfigError

METRICS_COLUMNS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s")
MAX_RUN_SUFFIX = 10_000  # out-2 ... out-10000, then give up with one line


@dataclass
class RunState:
    """Where a run stands; all of it goes into every checkpoint so a resume continues bit for bit."""

    epoch: int = 0                # completed epochs
    epoch_step: int = 0           # steps done inside the current epoch
    step: int = 0                 # global optimizer steps
    loss_sum: float = 0.0         # current epoch: sum of per-image loss so far
    correct: int = 0              # current epoch: correct predictions so far
    seen: int = 0                 # current epoch: images so far
    best_val_loss: float = math.inf   # the best epoch's loss (val, else train; see earlystop.EarlyStopping)
    best_acc: float = -math.inf   # the best epoch's accuracy, under train.monitor=val_acc
    bad_epochs: int = 0           # epochs since the best epoch (early stopping)
    stopped_early: bool = False   # early stopping ended the run at `epoch`
    history: list = field(default_factory=list)
    epoch_time: float = 0.0       # current epoch: seconds its steps took so far (in every process, until the last save)
    came_from: list = field(default_factory=list)   # the checkpoints of other run folders this run continues
    #                             ({"checkpoint": absolute path, "epoch", "step"}, oldest first: --resume --out)


def printable(text) -> str:
    """`text` safe for any terminal or UTF-8 file: a name that is not valid UTF-8 (os.fsdecode's
    surrogate escapes) shows its bad bytes as \\xNN instead of raising UnicodeEncodeError."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def refuse_a_file(out, what: str = "`out`") -> None:
    """CnnError when the run folder `out` (named by `what`: the setting or the option) is a file."""
    if Path(out).exists() and not Path(out).is_dir():
        raise CnnError(f"{printable(out)}: is a file, not a run folder; choose another {what}")


def refuse_unfit(out, data: dict, what: str = "`out`") -> None:
    """CnnError when `out` cannot be a new run folder (named by `what`): a file (refuse_a_file), a path
    with Windows' backslashes (ConfigError), or a folder inside a data folder of the config's data section
    (data.train, data.val, data.test), whose run files would read as a class folder of that data (a hidden
    one, data/.runs/x, is never read)."""
    refuse_a_file(out, what)
    if "\\" in os.fspath(out) and os.sep == "/":        # (out: runs\demo in a config written on Windows)
        raise ConfigError(printable(f"{out}: a Windows path: folders are separated by / here (no run folder is "
                                    f"named with a backslash); write {what} with /"))
    here = Path(out).resolve()
    for key in ("train", "val", "test"):
        folder = data.get(key)
        top = Path(folder).resolve() if folder and Path(folder).is_dir() else None
        if top is None or not here.is_relative_to(top):
            continue
        if not any(part.startswith(".") for part in here.relative_to(top).parts):
            raise CnnError(printable(f"{out}: is inside data.{key} ({folder}), where the run's files would read "
                                     f"as a class folder; choose another {what}"))


CREATED: set = set()     # the run folders (real paths) this process made: the only ones it may remove again


def new_run_dir(out: str, what: str = "`out`") -> Path:
    """Create and return `out`, or `out-2`, `out-3`... when `out` already exists and is not empty.

    Creation is exclusive (os.mkdir): two runs started at once never get the same folder. An existing
    empty folder is taken only by the process that creates a marker file in it first.
    """
    base = Path(out) if Path(out).name else Path(os.path.abspath(out))   # (--out . or ..: the folder's own name)
    if not base.name:
        raise CnnError(f"{printable(out)}: the root folder cannot be a run folder; give {what} a folder's name")
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CnnError(f"{out}: cannot create the run folder ({why_unwritten(err, base)})") from None
    refuse_a_file(out, what)
    for k in range(1, MAX_RUN_SUFFIX + 1):
        candidate = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            try:
                os.mkdir(candidate)
                CREATED.add(os.path.realpath(candidate))
                try:
                    claim_marker(candidate)
                except FileExistsError:        # (another run took the new folder: the next name)
                    raise
                except OSError:                # (a full disk: no folder left behind, nor the empty marker
                    with contextlib.suppress(OSError):          # a full disk lets open create)
                        (candidate / ".claimed").unlink(missing_ok=True)
                        os.rmdir(candidate)
                    raise
                return candidate
            except FileExistsError:
                if candidate.is_dir() and not any(p.name != ".claimed" for p in candidate.iterdir()):
                    try:
                        claim_marker(candidate)
                        return candidate
                    except FileExistsError:
                        continue
        except OSError as err:          # a read-only or full parent folder, or an empty folder not ours to write
            raise CnnError(f"{printable(candidate)}: cannot create the run folder "
                           f"({why_unwritten(err, candidate / '.claimed')})") from None
    raise CnnError(f"{out}: {MAX_RUN_SUFFIX} run folders of this name exist already; choose another `out`")


def check_utf8_name(path, what: str) -> None:
    """ConfigError when a run folder's path holds bytes that are not valid UTF-8 (a command line's
    undecodable bytes): the run's config.yaml, a UTF-8 YAML file, names the folder it lives in."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {printable(os.fspath(path))}: the path holds bytes that are not valid UTF-8; "
                          "choose a name that is") from None


def check_writable(folder: Path, hint: str = "") -> None:
    """Create `folder` if needed and write (then delete) a file in it, before any data is read: a
    read-only or full folder is one CnnError line naming it (+ hint), not a failure at the first save."""
    probe = Path(folder) / f".write-test.tmp-{os.getpid()}"     # (clean_debris's pattern, if killed here)
    try:
        try:
            Path(folder).mkdir(parents=True)
            CREATED.add(os.path.realpath(folder))
        except FileExistsError:
            pass
        with open(probe, "x", encoding="utf-8"):
            pass
        probe.unlink()
    except OSError as err:
        why = why_unwritten(err, probe, todo=not hint)
        raise CnnError(f"{printable(folder)}: cannot write the run folder ({why}){hint}") from None


RUN_ENTRIES = ("config.yaml", "last.npz", "best.npz", "metrics.csv", "skipped.txt", "test_metrics.json",
               "diverged.txt", "report", ".claimed")     # what a run writes in its folder (and event files)


def foreign_entries(folder: Path, shown: int = 3) -> list:
    """The first `shown` names in `folder` (sorted) that no run writes there (RUN_ENTRIES, TensorBoard's
    events.out.tfevents.*, a save's .*.tmp-*): a user's files, which a run writing into the folder or
    removing it would overwrite or delete; [] for a missing folder."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [n for n in names if n not in RUN_ENTRIES and not n.startswith("events.out.tfevents.")
            and not re.fullmatch(r"\..+\.tmp-.*", n)][:shown]


def taken_because(folder: Path) -> str:
    """Why a new run did not take `folder` (new_run_dir): it holds a run, or other files."""
    run = any((Path(folder) / name).exists() for name in ("config.yaml", "last.npz", "best.npz"))
    return "holds another run" if run else "is not empty"


def claim_marker(folder: Path) -> None:
    """Create `folder/.claimed` exclusively (FileExistsError when another run got there first)."""
    with open(folder / ".claimed", "x", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")


def clean_debris(run_dir: Path) -> list:
    """Delete the temporary files of saves a killed process left half-written; returns their names."""
    gone = []
    for debris in run_dir.glob(".*.tmp-*"):
        debris.unlink(missing_ok=True)
        gone.append(debris.name)
    return gone


def atomic_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8; undecodable name bytes as \\xNN) to `path` atomically (atomic.write_atomic);
    an OSError (a full disk) is one CnnError line naming the file, which is then whole or untouched."""
    had = os.path.isfile(path)                    # (a folder there is no previous file)
    try:
        write_atomic(path, lambda f: f.write(text), text=True)
    except OSError as err:
        line = f"{printable(str(path))}: cannot be written"
        raise write_failed(err, path, had, lambda words: CnnError(f"{line} {words}")) from None


def unsaved(err: CnnError, last: Path, run_dir) -> CnnError:
    """The error that stops a run whose file (a checkpoint, metrics.csv) could not be saved (err:
    checkpoint.save's or atomic_text's, with the OSError's errno): when its whole checkpoint `last`
    exists, err's line and how to go on from it: once the disk has room (a full disk, a used-up quota,
    an errno not known), else (a read-only folder, permission denied, a failing disk) once the folder
    can be written, or now in another folder (--resume --out). main_only: rank 0's saves, the run
    folder's fault, not rank 0's copy's (distributed.fail prints it without "rank 0 of K")."""
    if last.is_file():
        resume = f"cnn train --resume {run_dir}"
        if getattr(err, "errno", None) in (None, *ROOM):
            err = type(err)(f"{err}; once there is room, go on from {last.name}: {resume}")
        else:
            err = type(err)(f"{err}; once the folder can be written, go on from {last.name}: {resume}; or now in "
                            f"another: {resume} --out DIR")
    err.main_only = True
    return err


def write_metrics(run_dir: Path, history: list) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in METRICS_COLUMNS})
    atomic_text(run_dir / "metrics.csv", buf.getvalue())


_CSV_ROW = re.compile(r"\.(csv|tsv|txt) line \d+$", re.IGNORECASE)   # (csvindex reads all three)


def skipped_lines(skipped, where: str = "", rest: str = "", shown: int = 5) -> list:
    """The warning about unusable files, folders and labels-file rows [(path, or folder/, or "F.csv line
    N", reason)]: their counts (`where` says where they are all listed), the first `shown` with their
    reasons, then how many more (and `rest`)."""
    rows = sum(1 for p, _ in skipped if _CSV_ROW.search(p))      # a labels file's rows (csvindex: "F line N")
    folders = sum(1 for p, _ in skipped if p.endswith("/"))      # (a folder not scanned, a link not followed)
    counts = ((len(skipped) - rows - folders, "unusable file(s)"), (folders, "folder(s)"), (rows, "labels-file row(s)"))
    what = [f"{n} {name}" for n, name in counts if n]
    lines = [f"warning: skipped {' and '.join(what)}{where}:"]
    lines += [f"  {printable(p)}: {printable(r)}" for p, r in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"  ... and {len(skipped) - shown} more{rest}")
    return lines


def write_skipped(run_dir: Path, skipped, echo, where: str = "", tag: str = "") -> None:
    """skipped.txt (one `path<TAB>reason` a line) and a short warning naming the first five (`where`
    says whose they are). tag ("data.test: "): the rows go in with their reasons so tagged, in place of
    the file's rows of that tag (the test's files, added after training: a test run again replaces
    them), the others kept; without a tag the file holds these rows alone."""
    path = run_dir / "skipped.txt"
    old = ""
    if tag:
        with contextlib.suppress(FileNotFoundError):
            old = path.read_text(encoding="utf-8", errors="surrogateescape")
    kept = [row for row in old.splitlines() if not row.partition("\t")[2].startswith(tag)]
    listed = {row.partition("\t")[0] for row in kept}             # (data.test is data.train: each file once)
    rows = [f"{printable(p)}\t{tag}{printable(r)}" for p, r in skipped if printable(p) not in listed]
    if kept + rows:
        atomic_text(path, "".join(f"{row}\n" for row in dict.fromkeys(kept + rows)))
    elif old:                                        # (its only rows were the tag's, all readable now)
        path.unlink(missing_ok=True)
    if skipped:
        for line in skipped_lines(skipped, f"{where}, listed in {path}"):
            echo(line)


DIVERGED = "diverged.txt"    # the one-line error of a run whose loss became non-finite (cnn runs shows it)


def write_diverged(run_dir: Path, message: str) -> None:
    """Record in the run folder why the run stopped: its loss or gradients became non-finite."""
    try:
        atomic_text(run_dir / DIVERGED, printable(message) + "\n")
    except CnnError:
        pass                    # the error line itself reaches the user anyway


def clear_diverged(run_dir: Path) -> None:
    """A (resumed) run that trains again is no longer diverged."""
    try:
        (run_dir / DIVERGED).unlink(missing_ok=True)
    except OSError:
        pass


def read_diverged(run_dir: Path) -> str | None:
    """The message write_diverged left in run_dir, or None."""
    try:
        text = (run_dir / DIVERGED).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.strip().splitlines()[0] if text.strip() else "diverged"


def validation_info(val_ds) -> dict:
    """What a checkpoint records of the run's validation images (meta "data"): their number and
    the digest of their names, so cnn eval and --resume can tell when a rebuilt split differs."""
    from cnncli.data.pathlist import names_digest

    return {"val_images": int(len(val_ds.labels)), "val_digest": names_digest(val_ds.paths)}


def validation_changed(meta: dict, val_ds, split: bool = True) -> str | None:
    """None when `val_ds` holds the validation images the checkpoint's run used (or the checkpoint
    does not record them); else a sentence saying how they differ. split: val_ds is a split of
    data.train drawn again (else data.val's folder)."""
    saved = meta.get("data")
    if not isinstance(saved, dict) or "val_digest" not in saved:
        return None
    now = validation_info(val_ds)
    if now["val_digest"] == saved["val_digest"] or 0 in (now["val_images"], saved.get("val_images")):
        return None                  # (none before or now: the resume's own note, or the no-validation warning)
    why = ("the data folder changed since, and a split drawn again may hold images the run trained on" if split else
           "data.val holds other images now, whose losses best.npz and early stopping compare with the earlier ones")
    return f"the validation images differ from those the run used ({saved.get('val_images')} then, " \
           f"{now['val_images']} now): {why}"


def model_part(net, classes, preprocess: dict) -> tuple[dict, dict]:
    """(arrays, meta) of a checkpoint that describe the model alone: the network's parameters and BN
    statistics, its architecture, classes and input preprocessing (what Predictor reads); a run's
    checkpoint adds the optimizer state and the run state (save_checkpoint)."""
    arrays = {f"params/{k}": v for k, v in net.params.items()}
    if net.buffers is not None:
        arrays.update({f"buffers/{k}": v for k, v in net.buffers.items()})
    meta = {"cnncli_version": __version__, "num_classes": len(classes), "batchnorm": net.batchnorm,
            "eps": net.eps, "dtype": str(net.params.flat.dtype), "classes": list(classes),
            "preprocess": preprocess}
    return arrays, meta


def save_checkpoint(path: Path, net, opt, state: RunState, cfg: dict, classes, preprocess: dict,
                    cfg_text: str | None = None, data_info: dict | None = None,
                    weights_epoch: int | None = None) -> None:
    # weights_epoch: the epoch whose weights these are, when not the run state's (early stopping's
    # restore_best put best.npz's into last.npz)
    arrays, meta = model_part(net, classes, preprocess)
    arrays.update({f"optim/{k.removeprefix('optim.')}": v for k, v in opt.state_dict().items()})
    meta.update({
        "config": cfg_text if cfg_text is not None else config_mod.dump(cfg),
        "epoch": state.epoch,
        "epoch_step": state.epoch_step,
        "step": state.step,
        "loss_sum": state.loss_sum,
        "correct": state.correct,
        "seen": state.seen,
        "epoch_time": state.epoch_time,
        "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
        "best_acc": state.best_acc if math.isfinite(state.best_acc) else None,
        "bad_epochs": state.bad_epochs,
        "stopped_early": state.stopped_early,
        "history": state.history,
        "came_from": state.came_from,
    })
    if data_info is not None:
        meta["data"] = data_info
    if weights_epoch is not None:
        meta["weights_epoch"] = int(weights_epoch)
    checkpoint.save(path, arrays, meta)


def state_from_meta(meta: dict, path) -> RunState:
    try:
        best, best_acc = meta["best_val_loss"], meta.get("best_acc")     # (older checkpoints: no best_acc)
        return RunState(
            epoch=int(meta["epoch"]), epoch_step=int(meta["epoch_step"]), step=int(meta["step"]),
            loss_sum=float(meta["loss_sum"]), correct=int(meta["correct"]), seen=int(meta["seen"]),
            best_val_loss=math.inf if best is None else float(best),
            best_acc=-math.inf if best_acc is None else float(best_acc), bad_epochs=int(meta["bad_epochs"]),
            stopped_early=bool(meta.get("stopped_early", False)), history=list(meta["history"]),
            epoch_time=float(meta.get("epoch_time", 0.0)),      # (older checkpoints: none)
            came_from=list(meta.get("came_from", [])),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: checkpoint metadata lacks the run state needed to resume ({err})") from None
