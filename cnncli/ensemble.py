"""Several checkpoints as one model for `cnn eval` and `cnn predict`: the mean of their class
probabilities (soft voting), as a cross-validation's fold models are usually combined. A `cnn cv`
folder stands for its folds. Each member keeps its own input mean/std; all must share the classes
and the image size and resize. Not a trainer of ensembles, not exportable as one ONNX graph, and
an exported ONNX model (loaded here alone, onnxmodel.py) is no member.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import numpy as np

from cnncli.errors import CheckpointError
from cnncli.predictor import BEST_FIRST, Predictor, run_checkpoint

_FOLD = re.compile(r"fold-(\d+)")


def names_a_model(path) -> bool:
    """True for what cnn predict takes as its first PATH in place of --checkpoint: a .npz or .onnx file
    name (or a file of another name that is a checkpoint's zip, with its __meta__), a run folder
    (its best.npz or last.npz) or a cnn cv folder (its fold-1 run)."""
    p = Path(path)
    if p.suffix.lower() in (".npz", ".onnx"):
        return True
    try:
        is_file = p.is_file()
    except OSError:                 # (a name too long for the file system: no model)
        return False
    if is_file:                 # (a checkpoint under another name: a zip holding __meta__, which no image,
        import zipfile              # zip of images, PyTorch or Keras file is)

        from cnncli.checkpoint import META_KEY

        try:
            with open(p, "rb") as f:
                if f.read(4) != b"PK\x03\x04":
                    return False
            with zipfile.ZipFile(p) as z:
                return any(n.split(".")[0] == META_KEY for n in z.namelist())
        except (OSError, zipfile.BadZipFile):
            return False
    return p.is_dir() and any((p / name).is_file() or (p / "fold-1" / name).is_file() for name in BEST_FIRST)


def is_a_model(path) -> bool:
    """Among cnn predict's image paths, a model given by mistake: a .npz file, or a run or cnn cv folder
    (names_a_model, with the run's config.yaml), not a folder of images that happens to hold a
    best.npz. Opens no file (names_a_model reads the first bytes of a file: once per image path)."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        return True
    return p.is_dir() and names_a_model(p) and ((p / "config.yaml").is_file()
                                                 or (p / "fold-1" / "config.yaml").is_file())


def holds_runs(path) -> bool:
    """Whether the folder `path` has a run folder (or a cnn cv folder) among its subfolders: runs/."""
    try:
        return os.path.isdir(path) and any(e.is_dir() and is_a_model(e.path) for e in os.scandir(path))
    except OSError:
        return False


def mistyped_model(path) -> str | None:
    """For cnn predict's first PATH that does not exist: the one-line error when it looks like a
    checkpoint or run folder mistyped -- a .npz-like name, a name inside a run folder (runs/x/bset.npz),
    or a name spelt like a run folder beside it (runs/mesy for runs/messy) -- naming the closest model
    there; None for anything else: -, a missing image (an image's extension), another missing name."""
    from cnncli.data.csvindex import LIST_SUFFIXES
    from cnncli.data.decode import IMAGE_EXTENSIONS
    from cnncli.runfolder import printable

    p = Path(path)
    if path == "-" or os.path.lexists(p) or p.suffix.lower() in IMAGE_EXTENSIONS or \
            p.name.lower().endswith(LIST_SUFFIXES):
        return None
    parent = p.parent
    onnx = p.suffix.lower() == ".onnx"           # (a mistyped ONNX model: the .onnx files beside it)
    npz_like, in_run = p.suffix.lower().startswith(".np") or onnx, is_a_model(parent)
    named = Path(path).parent != Path(".")       # (runs/mesy; a bare name beside a run folder may be images)
    try:                                         # (names only: no file is opened)
        models = [e.name for e in os.scandir(parent) if e.name.lower().endswith(".onnx" if onnx else ".npz")
                  or (not onnx and e.is_dir() and is_a_model(e.path))] if parent.is_dir() and (named or npz_like) \
            else []
    except OSError:
        models = []
    by_lower = {m.lower(): m for m in models}    # (runs/MESSY for runs/messy)
    close = [by_lower[m] for m in difflib.get_close_matches(p.name.lower(), list(by_lower), n=1, cutoff=0.6)]
    if not (npz_like or in_run or close):
        return None
    if close:
        hint = f" (did you mean {parent / close[0]}?)"
    else:
        from cnncli.data.reasons import missing_hint    # (Windows' backslashes: runs\demo\best.npz)

        hint = missing_hint(os.fspath(path))
    what = "ONNX model file" if onnx else "checkpoint or run folder"
    return printable(f"{path}: no such {what}{hint}").replace("\n", "\\n")


def checkpoint_files(paths) -> list:
    """The checkpoint files of `paths`, in order: a .npz as given; a run folder's best.npz (else
    last.npz); a cnn cv folder's fold-1, fold-2, ... runs, each the same way."""
    out = []
    for given in paths:
        p = Path(given)
        folds = sorted((f for f in p.glob("fold-*") if f.is_dir() and _FOLD.fullmatch(f.name)),
                       key=lambda f: int(_FOLD.fullmatch(f.name).group(1))) if p.is_dir() else []
        if p.is_dir() and folds and not any((p / name).exists() for name in BEST_FIRST):
            out += [run_checkpoint(f, BEST_FIRST) for f in folds]
        else:
            out.append(run_checkpoint(p, BEST_FIRST))
    return out


class Ensemble:
    """Predictors of the same classes, image size and resize, as one (Predictor's interface for
    evaluate and predict: classes, preprocess, meta, predict_proba)."""

    def __init__(self, members: list, paths: list):
        first = members[0]
        for member, path in zip(members[1:], paths[1:]):
            if member.classes != first.classes:
                raise CheckpointError(f"{path}: its classes {member.classes} differ from {paths[0]}'s "
                                      f"{first.classes}; an ensemble needs the same classes")
            for key in ("image_size", "resize"):
                if member.preprocess[key] != first.preprocess[key]:
                    raise CheckpointError(f"{path}: its input {key} {member.preprocess[key]!r} differs from "
                                          f"{paths[0]}'s {first.preprocess[key]!r}")
        self.members, self.paths = members, [str(p) for p in paths]
        self.classes, self.meta = first.classes, first.meta
        self.preprocess = {"image_size": first.preprocess["image_size"], "resize": first.preprocess["resize"]}

    def predict_proba(self, images_u8: np.ndarray, batch_size: int = 256, fast=None) -> np.ndarray:
        """(N,S,S) uint8 -> (N,C): the members' probabilities averaged, added in member order (fast: as
        Predictor.predict_proba's, for each member)."""
        total = None
        for member in self.members:
            probs = member.predict_proba(images_u8, batch_size=batch_size, fast=fast)     # (N,C) float64
            total = probs if total is None else total + probs
        return total / len(self.members)


def load(paths):
    """-> (a Predictor, or an Ensemble of several, and the checkpoint files); a .onnx file (one, alone)
    -> an onnxmodel.OnnxPredictor, run by onnxruntime. A checkpoint named twice
    (runs/a and runs/a/best.npz, a cv folder and one of its folds) is refused: it would count twice."""
    from cnncli.checkpoint import is_onnx
    from cnncli.onnxmodel import OnnxPredictor

    files = checkpoint_files(paths)
    seen = {}
    for f in files:
        try:
            st = os.stat(f)
            same = (st.st_dev, st.st_ino)         # (a hard link too)
        except OSError:
            same = os.path.realpath(f)            # (Predictor.from_checkpoint names a missing file)
        first = seen.setdefault(same, f)
        if first is not f:
            also = "" if str(first) == str(f) else f" (also as {first})"
            raise CheckpointError(f"{f}: given twice{also}; an ensemble averages each checkpoint once")
    onnx = [f for f in files if is_onnx(f)]
    if onnx and len(files) > 1:
        raise CheckpointError(f"{onnx[0]}: an ONNX model does not join an ensemble (its members are averaged as "
                              "checkpoints); give the .npz checkpoints it was exported from")
    if onnx:
        return OnnxPredictor.load(onnx[0]), files
    members = [Predictor.from_checkpoint(f) for f in files]
    return (members[0] if len(members) == 1 else Ensemble(members, files)), files
