"""A trained network restored from a checkpoint, with the preprocessing it was trained with.

Used by `cnn eval`, `cnn predict`, `cnn report` and by the trainer to resume. It maps uint8 images to
the network's normalized float input; it is not a data loader (see data.py) nor a trainer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli import checkpoint
from cnncli.errors import CheckpointError


def run_checkpoint(path, names=("last.npz",)) -> Path:
    """A checkpoint file as given, or a run folder's first existing file of `names`. --resume uses
    last.npz; eval/predict prefer best.npz. A missing file is reported by checkpoint.load."""
    p = Path(path)
    if p.is_dir():
        for name in names:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: run folder has no {' or '.join(names)}")
    return p


def _require(meta: dict, key: str, kind, path) -> object:
    if key not in meta:
        raise CheckpointError(f"{path}: checkpoint metadata lacks '{key}'")
    value = meta[key]
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: checkpoint metadata '{key}' has the wrong type ({type(value).__name__})")
    return value


def network_from_arrays(arrays: dict, meta: dict, path, momentum: float = 0.1):
    """Build a Network whose parameters and BN buffers are those of a loaded checkpoint (every key checked)."""
    from cnncli import model

    num_classes = _require(meta, "num_classes", int, path)
    batchnorm = _require(meta, "batchnorm", str, path)
    eps = float(_require(meta, "eps", (int, float), path))
    dtype_name = _require(meta, "dtype", str, path)
    if batchnorm not in model.BATCHNORM:
        raise CheckpointError(f"{path}: checkpoint metadata 'batchnorm' is {batchnorm!r}, not one of {model.BATCHNORM}")
    if dtype_name not in ("float32", "float64"):
        raise CheckpointError(f"{path}: checkpoint metadata 'dtype' is {dtype_name!r}, not float32/float64")
    if num_classes < 2:
        raise CheckpointError(f"{path}: checkpoint metadata 'num_classes' is {num_classes}, need >= 2")
    dtype = np.dtype(dtype_name)
    expected = {}
    for name, shape in model.param_specs(num_classes, batchnorm):
        expected[f"params/{name}"] = (tuple(shape), dtype)
    for name, shape in model.buffer_specs(num_classes, batchnorm):
        expected[f"buffers/{name}"] = (tuple(shape), dtype)
    subset = {k: v for k, v in arrays.items() if k.startswith(("params/", "buffers/"))}
    checkpoint.check_arrays(subset, expected, path)
    net = model.Network(num_classes=num_classes, batchnorm=batchnorm, eps=eps, momentum=momentum, dtype=dtype)
    load_into(net, arrays)
    return net


def load_into(net, arrays: dict) -> None:
    """Copy a checkpoint's `params/<name>` and `buffers/<name>` arrays into `net` (Network.load_arrays)."""
    net.load_arrays({k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")},
                    {k[len("buffers/"):]: v for k, v in arrays.items() if k.startswith("buffers/")})


def input_table(mean: float, std: float, dtype) -> np.ndarray:
    """(256,) lookup: uint8 pixel value -> normalized network input ((v/255 - mean) / std)."""
    return ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(dtype)


class Predictor:
    """A restored network plus class names and preprocessing; see docs/design.md."""

    def __init__(self, network, classes: list, preprocess: dict, meta: dict):
        self.network = network
        self.classes = list(classes)
        self.preprocess = dict(preprocess)
        self.meta = meta
        self._table = input_table(self.preprocess["mean"], self.preprocess["std"], network.params.flat.dtype)

    @classmethod
    def from_checkpoint(cls, path) -> "Predictor":
        arrays, meta = checkpoint.load(path)
        net = network_from_arrays(arrays, meta, path)
        classes = _require(meta, "classes", list, path)
        if len(classes) != meta["num_classes"] or not all(isinstance(c, str) for c in classes):
            raise CheckpointError(f"{path}: checkpoint metadata 'classes' does not list {meta['num_classes']} names")
        prep = _require(meta, "preprocess", dict, path)
        for key, kind in (("image_size", int), ("resize", str), ("mean", (int, float)), ("std", (int, float))):
            _require(prep, key, kind, f"{path}: preprocess")
        if not prep["std"] > 0:
            raise CheckpointError(f"{path}: checkpoint metadata 'preprocess.std' must be > 0")
        return cls(net, classes, prep, meta)

    def to_input(self, images_u8: np.ndarray) -> np.ndarray:
        """(N,S,S) uint8 -> (N,1,S,S) normalized float input of the network's dtype."""
        if images_u8.dtype != np.uint8 or images_u8.ndim != 3:
            raise ValueError(f"images_u8 must be (N,S,S) uint8, got {images_u8.shape} {images_u8.dtype}")
        return self._table[images_u8][:, None, :, :]

    def predict_proba(self, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N,S,S) uint8 -> (N,C) class probabilities (sigmoid outputs), inference mode."""
        n = images_u8.shape[0]
        out = np.empty((n, len(self.classes)), dtype=np.float64)  # (N,C)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            out[start:stop] = self.network.predict_proba(self.to_input(images_u8[start:stop]))
        return out
