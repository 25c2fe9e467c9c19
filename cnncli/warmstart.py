"""Starting a new run from another run's weights (train.init_from): fine-tuning on more data, or on
other classes, as Keras' load_weights before fit or Ludwig's model_load_path.
Every layer below the output is copied, with BN's running statistics; the output layer's rows are
copied by class name, so shared classes keep theirs and new ones start from the seed's init. The
optimizer, schedule and epoch count start anew. Not --resume (resume.py), which continues one run.
"""

from __future__ import annotations

from pathlib import Path

from cnncli import checkpoint
from cnncli import config as config_mod
from cnncli.errors import CnnError, ConfigError

KEY = "train.init_from"
HEAD = ("fc2.w", "fc2.b")       # the output layer: (C,65) and (C,), one row per class


class Source:
    """A loaded init_from checkpoint: arrays, meta, the file's path and what it was trained as."""

    def __init__(self, arrays: dict, meta: dict, path: Path, batchnorm: str, normalize: bool):
        self.arrays, self.meta, self.path = arrays, meta, path
        self.batchnorm, self.normalize = batchnorm, normalize
        self.classes = [str(c) for c in meta.get("classes") or []]


def open_source(cfg: dict) -> Source | None:
    """The checkpoint cfg's train.init_from names (a .npz, or a run folder's best.npz, else
    last.npz), checked as eval checks one and against the config: the same model.batchnorm and
    data.normalize. None when the key is unset. Problems are one ConfigError naming the key."""
    from cnncli.predictor import BEST_FIRST, check_architecture, run_checkpoint

    given = cfg["train"]["init_from"]
    if not given:
        return None
    try:
        path = run_checkpoint(given, BEST_FIRST)
        arrays, meta = checkpoint.load(path)
        num_classes, batchnorm, _, _ = check_architecture(arrays, meta, path)
        checkpoint.check_run_meta(path, meta)
        saved = config_mod.load_config_text(meta.get("config", ""), source=f"{path} (config)")
        classes = meta.get("classes")
        if not (isinstance(classes, list) and len(classes) == num_classes):
            raise CnnError(f"{path}: checkpoint metadata 'classes' is not a list of {num_classes} names")
    except CnnError as err:
        raise ConfigError(f"{KEY}: {err}") from None
    want = cfg["model"]["batchnorm"]
    if batchnorm != want:
        raise ConfigError(f"{KEY}: {path} has model.batchnorm={batchnorm}, the config says {want}: "
                          f"set model.batchnorm={batchnorm} to start from its weights")
    normalize = bool(saved["data"]["normalize"])
    if normalize != cfg["data"]["normalize"]:
        raise ConfigError(f"{KEY}: {path} was trained with data.normalize={str(normalize).lower()}, the config "
                          f"says {str(cfg['data']['normalize']).lower()}: its weights expect the former")
    return Source(arrays, meta, path, batchnorm, normalize)


def preprocess(cfg: dict, source: Source) -> dict:
    """The new run's input preprocessing: the config's image size and resize with the source's
    mean and std, so the copied filters see inputs standardized as they were trained on."""
    pre = source.meta.get("preprocess") or {}
    mean, std = (float(pre.get("mean", 0.0)), float(pre.get("std", 1.0))) if source.normalize else (0.0, 1.0)
    return {"image_size": cfg["data"]["image_size"], "resize": cfg["data"]["resize"], "mean": mean, "std": std}


def apply(net, source: Source, classes) -> str:
    """Copy the source's weights into `net` (a new network for `classes`, seeded init): every
    parameter and BN buffer except the output layer, then the output rows of the classes both
    share. -> one line saying what was copied."""
    params = {k[len("params/"):]: v for k, v in source.arrays.items() if k.startswith("params/")}
    for name, view in net.params.items():
        if name not in HEAD:
            view[...] = params[name]
    if net.buffers is not None:
        for name, view in net.buffers.items():
            view[...] = source.arrays["buffers/" + name]
    from cnncli.data.names import matching_form

    form = matching_form(source.classes, classes)                      # (a macOS folder's e + accent is é)
    rows = {form(c): i for i, c in enumerate(source.classes)}
    shared = [(i, rows[form(c)]) for i, c in enumerate(classes) if form(c) in rows]
    for i, j in shared:
        net.params["fc2.w"][i] = params["fc2.w"][j]
        net.params["fc2.b"][i] = params["fc2.b"][j]
    from cnncli.runfolder import printable

    new = [c for c in classes if form(c) not in rows]
    targets = {form(c) for c in classes}
    dropped = [c for c in source.classes if form(c) not in targets]
    left = f"; the source's {', '.join(printable(c) for c in dropped[:8])}{', ...' if len(dropped) > 8 else ''} " \
           "left out" if dropped else ""
    line = f"Weights from {source.path}: every layer"
    if not new:
        return line + (f" (the output rows of these classes{left})" if dropped else "")
    head = f"the output rows of {len(shared)} shared class(es)" if shared else "no output rows (no class shared)"
    return (line + f" below the output, {head}; new: {', '.join(printable(c) for c in new)} "
            f"(train.seed's init){left}")
