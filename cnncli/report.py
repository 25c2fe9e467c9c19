"""`cnn report`: pictures of a training run (curves, confusion, per-class bars, worst errors, filters) + report.html.

Matplotlib is an optional extra, imported lazily with the Agg canvas (plotting.py; no pyplot, no display).
This module draws and writes files; the numbers come from evaluate.compute_metrics, never recomputed here.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
from pathlib import Path

import numpy as np

from .atomic import why_unwritten, write_atomic
from .errors import CnnError
from .data.names import printable as name_text
from .evaluate import evaluate_found, evaluate_predictor, notice_lines, validation_data
from .metrics_text import short_name
from .report_page import render_html, run_text
from .plotting import DPI, MATPLOTLIB_MISSING, STYLE, matplotlib_parts, new_figure  # noqa: F401 (API)

MAX_WRONG = 24  # images in the "most confidently wrong" grid
PICTURES = ("curves.png", "confusion.png", "per_class.png", "errors.png", "filters.png")   # what a report draws


# ---------------------------------------------------------------- run folder inputs


def read_history(path: Path) -> list[dict]:
    """metrics.csv rows as floats (NaN for empty cells), one row per epoch (the last logged row wins)."""
    if not path.is_file():
        return []
    by_epoch: dict[float, dict] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                values = {}
                for key, text in row.items():
                    if key is None:
                        continue
                    try:
                        values[key] = float(text) if text not in (None, "") else math.nan
                    except ValueError:
                        values[key] = math.nan
                if not math.isnan(values.get("epoch", math.nan)):
                    by_epoch[values["epoch"]] = values
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CnnError(f"{path}: cannot read metrics ({err})") from err
    return [by_epoch[e] for e in sorted(by_epoch)]


# ---------------------------------------------------------------- figures


def _label(name, width):
    """A class name for a figure: shortened, with '$' escaped so matplotlib does not parse it as math."""
    return short_name(name, width).replace("$", r"\$")


def figure_name(name: str, drawable) -> str:
    """A class name with each character no installed font has (drawable(c) false) as its escape
    (\\u56db), which a figure can show, rather than an empty box."""
    if drawable is None:
        return name
    return "".join(c if c.isascii() or drawable(c) else c.encode("unicode_escape").decode("ascii") for c in name)


def font_plan(names, matplotlib) -> tuple:
    """(font.family list, drawable(char) -> bool) for the class names: matplotlib's default font, then
    (matplotlib falls back per character) the first installed fonts that have the characters it lacks."""
    from matplotlib import font_manager

    family = list(matplotlib.rcParams["font.family"])
    try:
        first = font_manager.get_font(font_manager.findfont(font_manager.FontProperties(family=family)))
        have = set(first.get_charmap())
    except Exception:                  # no font at all: keep matplotlib's own behaviour
        return family, None
    lacking = {ord(c) for c in "".join(names) if not c.isascii()} - have
    for entry in font_manager.fontManager.ttflist if lacking else ():
        if entry.name.startswith("Last Resort"):    # (matplotlib's: a box for every character, drawn as a box)
            continue
        try:
            chars = set(font_manager.get_font(entry.fname).get_charmap())
        except Exception:              # an unreadable font file: not a candidate
            continue
        if lacking & chars and entry.name not in family:
            family.append(entry.name)
            have |= chars
            lacking -= chars
        if not lacking:
            break
    return family, lambda c: ord(c) in have


def plot_curves(fig, history):
    """Two panels: loss and accuracy per epoch (train and val), learning rate on a secondary axis."""
    ax_loss, ax_acc = fig.subplots(1, 2)
    if not history:
        for ax in (ax_loss, ax_acc):
            ax.text(0.5, 0.5, "no metrics.csv rows", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        return
    epochs = np.array([row.get("epoch", math.nan) for row in history])  # (E,)

    def column(name):
        return np.array([row.get(name, math.nan) for row in history])  # (E,)

    marker = "o" if len(epochs) <= 30 else None
    for ax, what, label in ((ax_loss, "loss", "loss (summed BCE)"), (ax_acc, "acc", "accuracy")):
        handles = []
        for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
            values = column(f"{split}_{what}")
            if np.isfinite(values).any():
                handles += ax.plot(epochs, values, color=color, marker=marker, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{'Loss' if what == 'loss' else 'Accuracy'} per epoch")
        ax.grid(True, alpha=0.3)
        if what == "acc":
            ax.set_ylim(-0.02, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
        lr = column("lr")
        if what == "loss" and np.isfinite(lr).any():
            ax_lr = ax.twinx()
            handles += ax_lr.plot(epochs, lr, color="0.5", linestyle="--", linewidth=1, label="learning rate")
            ax_lr.set_ylabel("learning rate", color="0.4")
            ax_lr.tick_params(axis="y", colors="0.4")
            positive = lr[np.isfinite(lr) & (lr > 0)]
            if positive.size and positive.max() / positive.min() > 20:
                ax_lr.set_yscale("log")
                # cosine ends near 0 (1e-10 at the last epoch): four decades below the peak are enough
                ax_lr.set_ylim(bottom=max(positive.min(), positive.max() * 1e-4) / 1.5, top=positive.max() * 1.5)
        if handles:
            ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="best")


def plot_confusion(fig, confusion, classes):
    """Two heatmaps of the confusion matrix: counts and row-normalized (recall on the diagonal)."""
    counts = np.asarray(confusion, dtype=np.int64)  # (C,C) rows = true
    rows = counts.sum(axis=1, keepdims=True)  # (C,1)
    normalized = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows != 0)  # (C,C)
    names = [_label(c, 14) for c in classes]
    ticks = np.arange(len(classes))
    annotate = len(classes) <= 20
    for ax, matrix, title, fmt in zip(
        fig.subplots(1, 2), (counts, normalized), ("Confusion matrix (counts)", "Row-normalized"), ("d", ".2f")
    ):
        top = 1.0 if fmt != "d" else max(1, int(matrix.max()) if matrix.size else 1)  # fractions on [0, 1]
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(ticks, names, rotation=45, ha="right")
        ax.set_yticks(ticks, names)
        if annotate:
            size = 8 if len(classes) <= 12 else 6
            for i in range(matrix.shape[0]):
                for j in range(matrix.shape[1]):
                    if fmt != "d" and matrix[i, j] == 0:
                        continue  # blank zero cells keep the normalized panel readable
                    color = "white" if matrix[i, j] > 0.6 * top else "black"
                    ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=size, color=color)


def plot_per_class(fig, metrics, classes, shown=None):
    """Grouped bars of precision and recall per class (metrics' keys `classes`, labelled `shown`)."""
    ax = fig.subplots()
    x = np.arange(len(classes))
    precision = [metrics["per_class"][c]["precision"] for c in classes]
    recall = [metrics["per_class"][c]["recall"] for c in classes]
    ax.bar(x - 0.2, precision, width=0.4, label="precision", color="tab:blue")
    ax.bar(x + 0.2, recall, width=0.4, label="recall", color="tab:orange")
    ax.set_xticks(x, [_label(c, 14) for c in shown or classes], rotation=45, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("score")
    ax.set_title("Per-class precision and recall")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylim(0, 1.15)
    ax.legend(loc="upper center", ncol=2)


def most_confident_errors(probs, labels, limit=MAX_WRONG):
    """Indices of misclassified images, most confident prediction first -> (idx (M,), pred (M,), prob (M,))."""
    pred = np.argmax(probs, axis=1)  # (N,)
    wrong = np.nonzero(pred != labels)[0]  # (W,)
    confidence = probs[wrong, pred[wrong]]  # (W,)
    order = np.argsort(-confidence, kind="stable")[:limit]
    idx = wrong[order]
    return idx, pred[idx], probs[idx, pred[idx]]


def plot_errors(fig, images, labels, classes, errors):
    """Grid of the most confidently wrong images with true class, predicted class and probability."""
    idx, pred, prob = errors
    if len(idx) == 0:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    cols = min(8, len(idx))
    rows = math.ceil(len(idx) / cols)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i, p, q in zip(axes, idx, pred, prob):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"true: {_label(classes[labels[i]], 12)}\npred: {_label(classes[p], 12)}\np = {q:.2f}",
                     fontsize=7)
    fig.suptitle("Most confidently wrong predictions")


def plot_filters(fig, weights):
    """First-layer filters (F,1,K,K) as small grayscale images on one shared symmetric scale."""
    w = np.asarray(weights, dtype=np.float64)[:, 0]  # (F,K,K)
    limit = float(np.abs(w).max()) or 1.0
    axes = np.atleast_1d(fig.subplots(1, w.shape[0])).ravel()
    image = None
    for f, ax in enumerate(axes):
        image = ax.imshow(w[f], cmap="gray", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"filter {f + 1}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="weight")
    fig.suptitle(f"First-layer {w.shape[1]}x{w.shape[2]} filters (conv1.w)")


# ---------------------------------------------------------------- HTML


# ---------------------------------------------------------------- entry point


def write_report(run_dir, data_dir=None, out_dir=None, checkpoint=None, echo=None) -> Path:
    """Write the run's PNGs and report.html into out_dir (default run_dir/report); returns the HTML path.
    echo (a line -> None): where the evaluation's warnings and skipped files are said."""
    matplotlib, Figure, Canvas = matplotlib_parts()
    from .predictor import BEST_FIRST, Predictor, run_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnError(f"{run_dir}: run folder not found")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    for folder in (out_dir, out_dir.parent):       # (another run's folder, or its report/ folder)
        holds = any((folder / name).is_file() for name in ("last.npz", "best.npz", "cv.json"))
        if holds and folder.resolve() != run_dir.resolve():
            raise CnnError(f"{out_dir}: {'holds' if folder == out_dir else 'lies in'} another run (its checkpoints); "
                           f"the report of {run_dir} goes elsewhere: give another --out")
    ckpt = Path(checkpoint) if checkpoint is not None else run_checkpoint(run_dir, BEST_FIRST)
    cfg_path = run_dir / "config.yaml"
    config_text = cfg_path.read_text(encoding="utf-8", errors="replace") if cfg_path.is_file() else ""
    history = read_history(run_dir / "metrics.csv")

    predictor = Predictor.from_checkpoint(ckpt)
    classes = [name_text(c) for c in predictor.classes]   # \xNN for bad bytes, \t \n for control characters
    found = None if data_dir is not None else validation_data(run_dir, predictor)
    if data_dir is not None:
        metrics, dataset, probs = evaluate_predictor(predictor, data_dir)
    elif found is not None:
        metrics, dataset, probs = evaluate_found(predictor, found, classes=classes)
    else:                                   # no validation images: the curves and filters only
        dataset, metrics = None, {"data": f"none: the run has no validation images (cnn report {run_dir} --data "
                                          "FOLDER adds the confusion matrix, per-class bars and mistakes)"}
    metrics["checkpoint"] = str(ckpt)
    if echo is not None:
        for line in notice_lines(metrics, lister="cnn eval --json"):        # (report has no --json)
            echo(line)
    errors = most_confident_errors(probs, dataset.labels) if dataset is not None else ([], [], [])
    errors_rows = [(name_text(dataset.paths[i]) if i < len(dataset.paths) else str(i), classes[dataset.labels[i]], classes[p],
                    f"{q:.4f}") for i, p, q in zip(*errors)]

    family, drawable = font_plan(classes, matplotlib)
    shown = [figure_name(c, drawable) for c in classes]      # the class names as the figures draw them
    n = len(classes)
    side = max(4.0, 0.35 * n + 2.2)
    grid_rows = max(1, math.ceil(len(errors[0]) / 8))
    specs = [
        ("curves.png", "Learning curves: loss and accuracy per epoch; learning rate dashed (right axis of the loss panel)",
         (11, 4), lambda fig: plot_curves(fig, history)),
        ("confusion.png", f"Confusion matrix of {ckpt.name} on {metrics['data']}",
         (2 * side + 1.5, side), lambda fig: plot_confusion(fig, metrics["confusion"], shown)),
        ("per_class.png", "Per-class precision and recall",
         (max(6.0, 0.5 * n + 2), 4), lambda fig: plot_per_class(fig, metrics, classes, shown)),
        ("errors.png", "Most confidently wrong images (true class, predicted class, probability)",
         (10, 0.5 + 1.45 * grid_rows), lambda fig: plot_errors(fig, dataset.images, dataset.labels, shown, errors)),
        ("filters.png", "First-layer convolution filters",
         (9, 2.2), lambda fig: plot_filters(fig, predictor.params["conv1.w"])),
    ]
    if dataset is None:
        specs = [spec for spec in specs if spec[0] in ("curves.png", "filters.png")]
    target = out_dir / "report.html"
    theirs = _not_a_reports(out_dir, [spec[0] for spec in specs] + [target.name])
    if theirs:                                     # (a folder of the user's pictures: never written over)
        raise CnnError(f"{out_dir}: holds {', '.join(theirs)}, no earlier report's (its report.html is not cnn's); "
                       "the report would write over them: give another --out")
    earlier = target.is_file()                 # (its pictures are a report's: others in --out DIR are the user's)
    made, pictures = not os.path.isdir(out_dir), []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context({**STYLE, "font.family": family}):
            for name, caption, size, draw in specs:
                fig = new_figure(Figure, Canvas, *size)
                draw(fig)
                buf = io.BytesIO()                 # (whole or not at all: a full disk keeps the earlier picture)
                fig.savefig(buf, format="png", dpi=DPI)
                write_atomic(out_dir / name, lambda f: f.write(buf.getvalue()))
                pictures.append((name, caption, buf.getvalue()))
            for name in PICTURES if earlier else ():   # (an earlier report's, of other data: not this one's)
                if name not in {spec[0] for spec in specs}:
                    (out_dir / name).unlink(missing_ok=True)
        folder = run_dir.resolve()                 # (a cnn cv fold: cv/fold-2)
        title = f"cnn report: {folder.parent.name + '/' if folder.name.startswith('fold-') else ''}{folder.name}"
        page = render_html(title, metrics, classes, history, config_text, pictures, errors_rows,
                           run_text(run_dir, ckpt))
        data = page.encode("utf-8", "backslashreplace")
        write_atomic(target, lambda f: f.write(data))
    except OSError as err:                 # (the file it failed on when the error names one: a full disk)
        where = err.filename if isinstance(err.filename, str) else out_dir
        hint = "; --out DIR writes it elsewhere" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
        why = why_unwritten(err, where if where != out_dir else target, todo=not hint)
        if made:                           # (a full disk: no report folder of some pictures left behind)
            with contextlib.suppress(OSError):
                for name, _, _ in pictures:
                    (out_dir / name).unlink()
                out_dir.rmdir()
        raise CnnError(f"{where}: cannot write the report ({why}){hint}") from err
    return target


__all__ = ["write_report", "read_history", "most_confident_errors", "render_html",
           "MATPLOTLIB_MISSING"]


def _not_a_reports(out_dir: Path, written) -> list:
    """The files of `out_dir` that a report would write (`written`: its pictures, report.html) when
    the folder's report.html is not one cnn wrote (its title starts "cnn report"): a user's, which
    the report would overwrite; [] for a new folder or an earlier report's."""
    names = [n for n in written if (out_dir / n).exists()]
    try:
        with open(out_dir / "report.html", "rb") as f:
            ours = b"<title>cnn report" in f.read(4096)
    except OSError:
        ours = False
    return [] if ours else names
