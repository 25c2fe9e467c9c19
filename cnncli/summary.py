"""What a checkpoint holds, for `cnn info`: its classes, its input preprocessing, the network layer
by layer (output shape and parameters, as Keras' model.summary() prints them), how far its run
trained and its recipe. NumPy only (no numba): it loads and checks the file as `cnn predict` does
(predictor.py); it runs nothing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from cnncli import arch
from cnncli.callbacks import loss_text, warmup_text
from cnncli.checkpoint import load_meta
from cnncli.errors import CnnError
from cnncli.predictor import Predictor
from cnncli.data.names import listed, printable as name_text, told_apart
from cnncli.runfolder import printable


def layers(num_classes: int, batchnorm: str) -> list:
    """[{name, type, output, parameters, statistics}] of the network in order: output the shape of
    one image's output (C,H,W) or (D,), parameters the trainable values (arch.param_specs),
    statistics BN's running mean and variance (arch.buffer_specs)."""
    c, s = arch.IMAGE_SHAPE[0], arch.IMAGE_SHAPE[1]
    bn = {"unit": "batch norm per unit", "channel": "batch norm per channel"}.get(batchnorm)
    rows = [("input", "grayscale image", (c, s, s))]
    for i, (maps, size) in enumerate(((6, s), (16, s // 2)), start=1):
        rows.append((f"conv{i}", "conv 5x5, pad 2", (maps, size, size)))
        if bn:
            rows.append((f"bn{i}", bn, (maps, size, size)))
        rows += [(f"elu{i}", "ELU", (maps, size, size)), (f"pool{i}", "max pool 2x2", (maps, size // 2, size // 2))]
    rows.append(("flatten", "C-order flatten", (16 * (s // 4) ** 2,)))
    rows.append(("fc1", "fully connected", (arch.FC1_UNITS,)))
    if bn:
        rows.append(("bn3", bn, (arch.FC1_UNITS,)))
    rows += [("elu3", "ELU", (arch.FC1_UNITS,)), ("fc2", "fully connected", (num_classes,)),
             ("sigmoid", "sigmoid", (num_classes,))]
    params = _sizes(arch.param_specs(num_classes, batchnorm))
    stats = _sizes(arch.buffer_specs(num_classes, batchnorm))
    return [{"name": name, "type": kind, "output": list(shape), "parameters": params.get(name, 0),
             "statistics": stats.get(name, 0)} for name, kind, shape in rows]


def _sizes(specs) -> dict:
    # layer name ("conv1") -> the number of values of its tensors ("conv1.w", "conv1.b")
    out = {}
    for name, shape in specs:
        layer = name.split(".")[0]
        out[layer] = out.get(layer, 0) + math.prod(shape)
    return out


def describe(path, run_last=None) -> dict:
    """Everything `cnn info` shows about the checkpoint file `path`, as JSON-ready values; a file that
    cnn predict would refuse raises its one-line CheckpointError. run_last: the run's last.npz when
    `path` is its best.npz (a run folder given): "training" then says how far the run trained, and
    "best" which epoch's weights `path` holds."""
    pred = Predictor.from_checkpoint(path)
    meta, prep = pred.meta, pred.preprocess
    best, last_error = None, None
    if run_last is not None:                     # (a last.npz that cannot be read: the best's own state)
        try:
            last_meta = load_meta(run_last)
        except CnnError as err:
            last_meta, last_error = None, str(err)
        if last_meta is not None:
            best, meta = _training(meta), last_meta
    rows = layers(len(pred.classes), pred.batchnorm)
    return {
        "checkpoint": os.fspath(path),
        "bytes": os.path.getsize(path),
        "cnncli_version": _typed(meta.get("cnncli_version"), str),
        "classes": pred.classes,
        "preprocess": {"image_size": prep["image_size"], "resize": prep["resize"],
                       "mean": float(prep["mean"]), "std": float(prep["std"])},
        "batchnorm": pred.batchnorm,
        "dtype": str(pred.params.flat.dtype),
        "eps": pred.eps,
        "parameters": int(pred.params.flat.size),
        "statistics": int(pred.buffers.flat.size),
        "layers": rows,
        "training": _training(meta),
        "best": best,
        "last_unreadable": last_error,
        "recipe": _recipe(run_config(meta)),
        "test": _test_result(path),
        "state": _run_state(path, meta, latest=best is not None or Path(path).name == "last.npz"),
    }


def _run_state(path, meta: dict, latest: bool) -> str | None:
    # "training" while a process trains the run the file lies in, "unfinished" when its run's latest state
    # (last.npz) is short of its epochs without early stopping or a divergence, else None
    from cnncli.runfolder import read_diverged
    from cnncli.runlock import training_now

    folder = Path(path).parent
    if training_now(folder):
        return "training"
    t = _training(meta)
    if not latest or t["epoch"] is None or t["epochs"] is None or t["stopped_early"] or read_diverged(folder):
        return None
    return "unfinished" if t["epoch"] < t["epochs"] else None


def run_state(folder) -> str | None:
    """_run_state of the run folder `folder` from its last.npz: "training", "unfinished" or None
    (no readable last.npz too)."""
    last = Path(folder) / "last.npz"
    try:
        meta = load_meta(last) if last.is_file() else None
    except CnnError:
        meta = None
    return None if meta is None else _run_state(last, meta, latest=True)


def _test_result(path) -> dict | None:
    # the run's test (test_metrics.json beside `path`) when it measured this file: data.test's images,
    # accuracy, macro F1
    import json

    try:
        t = json.loads((Path(path).parent / "test_metrics.json").read_text(encoding="utf-8"))
        if Path(str(t["checkpoint"])).name != Path(path).name:     # (the run's best.npz; last.npz given)
            return None
        return {"num_images": int(t["num_images"]), "data": str(t.get("data", "data.test")),
                "accuracy": float(t["accuracy"]), "macro_f1": float(t["macro_f1"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _typed(value, kind):
    # value when it has the type kind (bool is not an int here), else None: metadata is untrusted
    if isinstance(value, bool) and kind is not bool:
        return None
    return value if isinstance(value, kind) else None


def _training(meta: dict) -> dict:
    # how far the run had trained when it wrote the file (None where the metadata does not say)
    history = _typed(meta.get("history"), list) or []
    last = history[-1] if history and isinstance(history[-1], dict) else None
    if last is not None:                         # NaN (no validation images) -> None: strict JSON
        last = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in last.items()}
    cfg = run_config(meta)
    return {"epoch": _typed(meta.get("epoch"), int), "epoch_step": _typed(meta.get("epoch_step"), int),
            "step": _typed(meta.get("step"), int), "epochs": _typed(config_value(cfg, "train.epochs"), int),
            "stopped_early": _typed(meta.get("stopped_early"), bool), "last_epoch": last,
            "weights_epoch": _weights_epoch(meta, history),
            "init_from": _typed(config_value(cfg, "train.init_from"), str),
            "came_from": came_from(meta)}


def came_from(meta: dict) -> list:
    """The checkpoints of other run folders the run continues ({"checkpoint", "epoch", "step"}, oldest
    first: --resume with --out), the well-formed rows of the untrusted metadata."""
    def counts(r):                               # (epoch, step) when both are whole numbers >= 0
        values = [_typed(r.get(k), int) for k in ("epoch", "step")]
        return all(v is not None and v >= 0 for v in values)

    return [r for r in _typed(meta.get("came_from"), list) or []
            if isinstance(r, dict) and isinstance(r.get("checkpoint"), str) and counts(r)]


def _weights_epoch(meta: dict, history: list):
    # {"epoch", "row"} of the epoch whose weights the file holds when that is not its last epoch
    # (early stopping restored the best into last.npz), else None
    epoch = _typed(meta.get("weights_epoch"), int)
    if epoch is None or epoch == _typed(meta.get("epoch"), int):
        return None
    row = next((r for r in history if isinstance(r, dict) and r.get("epoch") == epoch), None)
    if row is not None:
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return {"epoch": epoch, "row": row}


# the settings `cnn info` shows of the run's recipe: (dotted key, type), as the run's config stored them
RECIPE = (("optim.name", str), ("optim.lr", float), ("optim.schedule", str), ("optim.warmup_epochs", float),
          ("optim.weight_decay", float), ("train.batch_size", int), ("train.seed", int),
          ("train.class_weight", (str, dict)), ("augment.enabled", bool))


def _recipe(cfg: dict) -> dict:
    # {dotted key: value} of RECIPE, None where the stored config lacks it or holds another type
    out = {}
    for key, kind in RECIPE:
        value = config_value(cfg, key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = _typed(value, kind)
    out["augment.changed"] = _augment_changed(cfg)
    return out


def _augment_changed(cfg: dict) -> list | None:
    # ["affine.rotate 11", ...]: the augment.* settings (but enabled) the stored config holds away from
    # their defaults (a run's recipe line said only "augmentation on")
    from cnncli.options import LEAVES

    if not isinstance(cfg.get("augment"), dict):
        return None
    changed = []
    for key, opt in LEAVES.items():
        value = config_value(cfg, key)
        if key.startswith("augment.") and key != "augment.enabled" and value is not None and value != opt.default:
            changed.append(f"{key[len('augment.'):]} {value:g}" if isinstance(value, float) else
                           f"{key[len('augment.'):]} {value}")
    return changed


def run_config(meta: dict) -> dict:
    """The run's config in a checkpoint's metadata (untrusted YAML text) as a dict; {} when there is
    none, it does not parse or is no mapping."""
    text = meta.get("config")
    try:
        cfg = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def config_value(cfg: dict, dotted: str):
    """cfg["a"]["b"] for "a.b" as stored, or None where the path does not lead (no defaults: the
    metadata's own values, for cnn info and cnn runs)."""
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def format_info(info: dict) -> str:
    """The text `cnn info` prints for describe()'s dict."""
    prep, train = info["preprocess"], info["training"]
    size = info["bytes"]
    made = f", cnncli {info['cnncli_version']}" if info["cnncli_version"] else ""
    names = ", ".join(told_apart(info["classes"], listed))    # (two forms of one name: spelled out)
    lines = [
        f"checkpoint  {printable(info['checkpoint'])} ({_bytes(size)}{made})",
        f"classes     {len(info['classes'])}: {names}",
        f"input       {prep['image_size']}x{prep['image_size']} grayscale (resize: {prep['resize']}), "
        f"normalized as (pixel/255 - {prep['mean']:.4f}) / {prep['std']:.4f}",
        f"network     batchnorm {info['batchnorm']}, {info['dtype']}"
        + (f", eps {info['eps']:g}" if info["batchnorm"] != "none" else ""),
        f"trained     {_progress(train)}"
        + (f", starting from {printable(train['init_from'])}'s weights" if train["init_from"] else "")
        + {"training": "; a process trains it now",
           "unfinished": f"; unfinished: cnn train --resume {printable(os.path.dirname(info['checkpoint']) or '.')} "
                         "goes on"}.get(info.get("state"), ""),
    ]
    last = train["last_epoch"]
    if last:
        lines.append(f"            {_epoch_line(last)}")
    for i, came in enumerate(reversed(train["came_from"])):   # (the run it continues, newest first)
        shown = printable(came["checkpoint"]).replace("\n", "\\n").replace("\r", "\\r")   # (one line each)
        lines.append(f"{'resumed' if i == 0 else '':12s}{'from' if i == 0 else 'before that from'} "
                     f"{shown} at epoch {came['epoch']} (step {came['step']})")
    if info.get("last_unreadable"):              # (the progress above is then best.npz's own)
        lines.append(f"last.npz    unreadable, so this is best.npz's progress: {printable(info['last_unreadable'])}")
    held, best = train.get("weights_epoch"), info.get("best")
    if best and best["last_epoch"] and best["last_epoch"].get("epoch") != (last or {}).get("epoch"):
        # a run folder whose best epoch is not its last: best.npz's weights, the run's state from last.npz
        lines.append(f"weights     epoch {best['last_epoch'].get('epoch')}'s (the best, best.npz): "
                     + _epoch_line(best["last_epoch"]).split(": ", 1)[1])
    elif held:                                 # early stopping put the best epoch's weights back
        lines.append(f"weights     epoch {held['epoch']}'s (the best, restored by early stopping)"
                     + (f": {_epoch_line(held['row']).split(': ', 1)[1]}" if held["row"] else ""))
    recipe = _recipe_line(info["recipe"])
    if recipe:
        lines.append(f"recipe      {recipe}")
    test = info.get("test")
    if test:
        lines.append(f"test        {test['num_images']} image(s) of {printable(test['data'])}: accuracy "
                     f"{test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}")
    lines += ["", f"{'layer':9s} {'type':24s} {'output':>10s} {'parameters':>11s}"]
    for row in info["layers"]:
        shape = "x".join(str(d) for d in row["output"])
        lines.append(f"{row['name']:9s} {row['type']:24s} {shape:>10s} {row['parameters']:>11,}")
    total = f"total: {info['parameters']:,} trainable parameters ({info['dtype']})"
    if info["statistics"]:
        total += f"; {info['statistics']:,} BN running statistics (not trained)"
    lines.append(total)
    return "\n".join(lines)


def _recipe_line(r: dict) -> str:
    # "adam lr 0.003 cosine (warmup 0.5 epochs), weight decay 0, batch 64, augmentation on, seed 0"
    parts = []
    if r["optim.name"] is not None:
        head = r["optim.name"] + (f" lr {r['optim.lr']:g}" if r["optim.lr"] is not None else "")
        if r["optim.schedule"] is not None:
            head += f" {r['optim.schedule']}{warmup_text(r['optim.warmup_epochs'])}"
        parts.append(head)
    if r["optim.weight_decay"] is not None:
        parts.append(f"weight decay {r['optim.weight_decay']:g}")
    if r["train.batch_size"] is not None:
        parts.append(f"batch {r['train.batch_size']}")
    if r["augment.enabled"] is not None:
        changed = r.get("augment.changed") if r["augment.enabled"] else None
        parts.append(f"augmentation {'on' if r['augment.enabled'] else 'off'}"
                     + (f" ({', '.join(changed)})" if changed else ""))
    weights = r["train.class_weight"]
    if isinstance(weights, dict):
        parts.append("class weights " + ", ".join(f"{k} {v}" for k, v in weights.items()))
    elif weights not in (None, "none"):
        parts.append(f"class weights {weights}")
    if r["train.seed"] is not None:
        parts.append(f"seed {r['train.seed']}")
    return ", ".join(map(name_text, parts))


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def _progress(train: dict) -> str:
    # "18 of 150 epochs (90 steps), stopped early", or what of it the metadata holds
    epoch, epochs = train["epoch"], train["epochs"]
    if epoch is None:
        return "unknown (no run state in the metadata)"
    text = f"{epoch} of {epochs} epochs" if epochs is not None else f"{epoch} epoch(s)"
    if train["epoch_step"]:
        text += f" and {train['epoch_step']} step(s) of epoch {epoch + 1}"
    if train["step"] is not None:
        text += f" ({train['step']} steps)"
    if train["stopped_early"]:
        text += ", stopped early"
    return text


def _epoch_line(row: dict) -> str:
    # "epoch 18: train loss 2.2450 acc 40.00%, val loss 2.2511 acc 36.67%" (what the row holds)
    parts = []
    for side in ("train", "val"):
        loss, acc = _number(row.get(f"{side}_loss")), _number(row.get(f"{side}_acc"))
        if loss is not None and math.isfinite(loss):
            shown = f" acc {acc:.2%}" if acc is not None and math.isfinite(acc) else ""
            parts.append(f"{side} loss {loss_text(loss)}{shown}")
    epoch = _number(row.get("epoch"))
    head = f"epoch {int(epoch)}" if epoch is not None and math.isfinite(epoch) else "last epoch"
    return f"{head}: " + (", ".join(parts) if parts else "no metrics recorded")


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
