"""Classification metrics (loss, accuracy, top-k, per-class P/R/F1, confusion) of a checkpoint or a
network on labelled images. It does not plot (report.py), handle cnn predict's files
(predictions.py), print them (metrics_text.py) or know about the CLI.
"""

# Pure numpy and vectorized; the model is reached through `predictor.Predictor`, and by the training
# loop's validation (`evaluate_loss_acc`) through the Network it trains.
# This module does not plot (see report.py) and does not know about the CLI.

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import CnnError, ConfigError, DataError, Stopped

# Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before the logs of the BCE loss.
PROB_EPS = 1e-7
ROWS = 1 << 16      # rows per chunk of the (N,C) temporaries: a million images add MBs, not GBs


def _check_inputs(probs, labels, classes):
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
    n, c = probs.shape
    if c != len(classes):
        raise ValueError(f"probs has {c} columns but classes has {len(classes)} names")
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match probs {probs.shape}, got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")
    return probs, labels.astype(np.int64)


def top_k_indices(probs, k):
    """(N,C) -> (N,k) class indices by decreasing probability; ties keep the lower index first."""
    k = max(1, min(int(k), probs.shape[1]))
    out = np.empty((probs.shape[0], k), dtype=np.intp)  # (N,k)
    for a in range(0, probs.shape[0], ROWS):            # rows are independent: chunks change nothing
        out[a:a + ROWS] = np.argsort(-probs[a:a + ROWS], axis=1, kind="stable")[:, :k]
    return out


def bce_loss(probs, labels):
    """Mean over images of the summed binary cross-entropy of C sigmoid outputs vs one-hot. The (N,C)
    temporaries are made ROWS rows at a time; each row's sum and the one mean are as in one shot."""
    n, c = probs.shape
    if n == 0:
        return 0.0
    labels = np.asarray(labels)
    per_image = np.empty(n, dtype=np.float64)  # (N,)
    for a in range(0, n, ROWS):
        p = np.clip(probs[a:a + ROWS].astype(np.float64), PROB_EPS, 1.0 - PROB_EPS)  # (rows,C)
        onehot = np.zeros(p.shape, dtype=bool)
        onehot[np.arange(p.shape[0]), labels[a:a + ROWS]] = True
        per_image[a:a + ROWS] = -np.where(onehot, np.log(p), np.log1p(-p)).sum(axis=1)
    return float(per_image.mean())


def _safe_div(num, den):
    """Elementwise num/den with 0 where den == 0 (no warnings, no NaN)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def compute_metrics(probs, labels, classes, top_k=3) -> dict:
    """Metrics of (N,C) probabilities against (N,) integer labels; see docs/design.md for the keys."""
    probs, labels = _check_inputs(probs, labels, classes)
    n, c = probs.shape
    k = max(1, min(int(top_k), c))
    top = top_k_indices(probs, k)  # (N,k)
    pred = top[:, 0]  # (N,)
    confusion = np.bincount(labels * c + pred, minlength=c * c).reshape(c, c)  # (C,C) rows = true
    tp = np.diag(confusion)  # (C,)
    support = confusion.sum(axis=1)  # (C,) true count per class
    predicted = confusion.sum(axis=0)  # (C,) predicted count per class
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * precision * recall, precision + recall)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "loss": bce_loss(probs, labels),
        "top_k": k,
        "top_k_accuracy": float(np.any(top == labels[:, None], axis=1).mean()) if n else 0.0,
        "num_images": int(n),
        "per_class": per_class,
        # over the classes that are true or predicted at least once (scikit-learn's default labels):
        # a class with no images here that the model never predicts has no F1 to average
        "macro_f1": float(f1[(support > 0) | (predicted > 0)].mean()) if n else 0.0,
        "classes": [str(name) for name in classes],       # the confusion matrix's rows and columns, in order
        "confusion": confusion.astype(int).tolist(),
        "absent": [name for name, m in per_class.items() if m["support"] == 0],   # no images of these
    }


def checkpoint_top_k(meta: dict) -> int:
    """The train.top_k of the config stored in a checkpoint's metadata (3 when it has none); an exported
    ONNX model's meta (onnxmodel.OnnxPredictor) holds it as "top_k"."""
    from . import config as config_mod

    if isinstance(meta.get("top_k"), int) and meta["top_k"] >= 1:
        return meta["top_k"]
    try:
        return int(config_mod.load_config_text(meta.get("config") or "")["train"]["top_k"])
    except (CnnError, TypeError, ValueError, AttributeError):
        return 3


def evaluate(checkpoint, data_dir, batch_size=256, top_k=None, cache=True, strict=False):
    """Evaluate a checkpoint on an image folder -> (metrics, dataset, probs (N,C)); data_dir None: on
    the validation images of the run folder the checkpoint lies in (validation_data). strict: an
    unusable file is a DataError listing them (as cnn train --strict), not a skipped one.
    top_k None: the checkpoint config's train.top_k. `checkpoint` may be a list of checkpoints, run
    folders and cnn cv folders: their ensemble (ensemble.py) is evaluated, on data_dir only."""
    from .ensemble import load
    from .checkpoint import is_onnx

    predictor, files = load(checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint])
    if len(files) > 1 and data_dir is None:
        raise ConfigError(f"{len(files)} checkpoints (an ensemble): pass --data FOLDER to choose the images to "
                       "evaluate (each run held out other validation images)")
    checkpoint = files[0]
    if data_dir is None and is_onnx(checkpoint):
        raise ConfigError(f"{checkpoint}: an ONNX model holds no run to rebuild its validation images from; pass "
                       "--data FOLDER to choose the images to evaluate")
    if data_dir is not None:
        metrics, dataset, probs = evaluate_predictor(predictor, data_dir, batch_size=batch_size, top_k=top_k,
                                                     cache=cache, strict=strict)
    else:
        run_dir = Path(checkpoint).parent
        found = validation_data(run_dir, predictor, cache=cache, strict=strict)
        if found is None:
            raise CnnError(f"{run_dir}: the run held out no validation images (data.val_split 0, or too few "
                           "images); pass --data FOLDER to choose the images to evaluate")
        metrics, dataset, probs = evaluate_found(predictor, found, batch_size=batch_size, top_k=top_k)
    metrics["checkpoint"] = str(checkpoint) if len(files) == 1 else [str(f) for f in files]
    return metrics, dataset, probs


def nonfinite_rows(probs) -> int:
    """How many rows of probabilities (N,C) hold a value that is not finite (weights that overflow)."""
    return int((~np.isfinite(probs)).any(axis=1).sum()) if probs.size else 0


def nonfinite_outputs(bad: int, total: int) -> str:
    """The warning (without "warning: ") for `bad` (nonfinite_rows) of `total` images, or "" when bad is 0."""
    return (f"the model's outputs are not finite for {bad} of {total} image(s): its weights overflow (did its "
            "training diverge?)") if bad else ""


def evaluate_found(predictor, found, batch_size=256, top_k=None, classes=None):
    """(metrics, dataset, probs) of a Predictor on validation_data's (dataset, skipped [(path, reason)],
    description, warnings); classes: the names the metrics use (default the predictor's)."""
    from .data import printable

    dataset, skipped, description, warnings = found
    probs = predictor.predict_proba(dataset.images, batch_size=batch_size)  # (N,C)
    k = checkpoint_top_k(predictor.meta) if top_k is None else top_k
    metrics = compute_metrics(probs, dataset.labels, predictor.classes if classes is None else classes, top_k=k)
    metrics["data"] = description
    metrics["skipped"] = len(skipped)
    metrics["skipped_files"] = [[printable(p), printable(r)] for p, r in skipped]
    # the dataset's lines keep their kind: "warning: ..." among the warnings, "note: ..." among the notes
    metrics["warnings"] = list(warnings) + [n.partition(": ")[2] for n in dataset.notes if not n.startswith("note: ")]
    overflow = nonfinite_outputs(nonfinite_rows(probs), len(probs))
    if overflow:
        metrics["warnings"].append(overflow)
    metrics["notes"] = [n.partition(": ")[2] for n in dataset.notes if n.startswith("note: ")]
    return metrics, dataset, probs


def notice_lines(metrics: dict, lister: str = "--json") -> list:
    """The lines eval and report print on stderr: each warning, each note, then the skipped files
    (the first five named with their reasons, as cnn train names them; `lister` names the option or
    command that lists them all)."""
    from .runfolder import skipped_lines

    files = metrics.get("skipped_files", [])
    return [f"warning: {w}" for w in metrics.get("warnings", [])] + [f"note: {n}" for n in metrics.get("notes", [])] + \
        (skipped_lines(files, rest=f" ({lister} lists them all)") if files else [])


def validation_data(run_dir: Path, predictor, cache=True, strict=False):
    """(dataset, skipped [(path, reason)], description, warnings): the run's validation split rebuilt
    from its config.yaml as training held it out (a warning when its images are not those the
    checkpoint's run validated on); None when the run has no validation images (data.val_split 0
    decodes nothing to find that out). cache False: decode again, bypassing the dataset cache."""
    from . import config as config_mod
    from . import rundata
    from .checkpoint import model_only
    from .datanotes import holds_out_nothing
    from .runfolder import validation_changed

    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        if model_only(predictor.meta):
            raise CnnError("the checkpoint holds a model without its run (predictor.save_model writes such files), "
                           "so there are no validation images to rebuild: pass --data to choose the images")
        raise CnnError(f"{cfg_path}: not found; pass --data to choose the images to evaluate")
    try:
        cfg = config_mod.load_config(cfg_path)
        if holds_out_nothing(cfg):
            return None
        cfg["data"]["cache"] = cfg["data"]["cache"] and cache
        cfg["data"]["strict"] = cfg["data"]["strict"] or strict
        val_ds, skipped = rundata.load_validation(cfg, predictor.classes, echo=_to_stderr)
    except Stopped:
        raise                   # (a stop signal meanwhile: its own line, not a data problem)
    except CnnError as err:
        raise CnnError(f"cannot rebuild the validation data from {cfg_path} ({err}); pass --data FOLDER") from err
    if val_ds is None or len(val_ds.labels) == 0:
        return None
    check_classes(predictor.classes, val_ds.classes, cfg_path)
    changed = validation_changed(predictor.meta, val_ds, not cfg["data"].get("val"))
    warnings = [f"{changed}; pass --data FOLDER to evaluate on images of your choice"] if changed else []
    d = cfg["data"]
    if not d.get("val"):        # (data.train's unreadable files: none of them is a validation image)
        skipped = []
    if d.get("val"):
        description = f"{d['val']} (data.val of {cfg_path})"
    elif d.get("folds"):
        description = f"fold {d['fold'] + 1} of {d['folds']} of {d.get('train')} (from {cfg_path})"
    else:
        description = f"validation split {d.get('val_split')} of {d.get('train')} (from {cfg_path})"
    return val_ds, list(skipped), description, warnings


def evaluate_predictor(predictor, data_dir, batch_size=256, top_k=None, cache=True, strict=False):
    """Like `evaluate` for an already restored Predictor (metrics get "data" and "skipped")."""
    from . import data

    pre = predictor.preprocess
    dataset, skipped = data.load_folder(
        data_dir,
        image_size=int(pre.get("image_size", 32)),
        resize=pre.get("resize", "pad"),
        classes=list(predictor.classes),
        cache=cache,
        missing_ok=True,
        strict=strict,
    )
    check_classes(predictor.classes, dataset.classes, data_dir)
    if len(dataset.labels) == 0:
        from .data.reasons import unreadable_text

        raise DataError(f"{data_dir}: no readable images to evaluate"
                        + (f": {unreadable_text(skipped)}" if skipped else ""))
    return evaluate_found(predictor, (dataset, list(skipped), str(data_dir), []), batch_size=batch_size, top_k=top_k)


def check_classes(expected, found, data_dir):
    """DataError naming the differences when a data folder's classes differ from the model's."""
    expected, found = list(expected), list(found)
    if expected == found:
        return
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unknown {extra}")
    if not parts:
        parts.append(f"order {found} != {expected}")
    raise DataError(f"{data_dir}: classes do not match the checkpoint: " + "; ".join(parts))


__all__ = [
    "compute_metrics",
    "evaluate",
    "evaluate_predictor",
    "notice_lines",
    "top_k_indices",
    "bce_loss",
    "check_classes",
    "checkpoint_top_k",
    "PROB_EPS",
]


def evaluate_loss_acc(net, table, ds, batch_size=256, comm=None):
    """Loss (evaluate.bce_loss, as `cnn eval` reports it) and accuracy of `net` on a Dataset, inference
    mode. With a comm, each rank predicts a block of the fixed chunks of `batch_size` images and the
    probabilities are gathered: every rank gets the numbers one process gets, bit for bit."""
    from cnncli.distributed import block_of
    from cnncli.kernels import lookup_batch

    n = len(ds.labels)
    if n == 0:
        return float("nan"), float("nan")
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    lo, hi = block_of(rank, size, -(-n // batch_size))                # this rank's chunks
    first, last = lo * batch_size, min(hi * batch_size, n)
    probs = np.empty((last - first, net.num_classes), dtype=np.float64)  # (chunk images, C)
    for start in range(first, last, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        probs[start - first : start - first + batch_size] = net.predict_proba(lookup_batch(ds.images, idx, table))
    if comm is not None:
        probs = comm.gather_rows(probs)                                  # (N,C), rank order = image order
    return bce_loss(probs, ds.labels), float((probs.argmax(1) == ds.labels).mean())


def _to_stderr(line: str) -> None:
    # a line said while the validation data is rebuilt (the demo dataset generated again), before the result
    print(line, file=sys.stderr, flush=True)
