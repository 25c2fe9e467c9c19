"""A trained network restored from a checkpoint, with the preprocessing it was trained with.

Used by `cnn eval`, `cnn predict`, `cnn report` and by the trainer to resume. It maps uint8 images to
the network's normalized float input and runs small calls on the NumPy forward (infer.py), big ones on
the numba Network (model.py, imported only then); it is not a data loader (see the cnncli.data package) nor a trainer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnncli import arch, checkpoint, infer
from cnncli.arch import IMAGE_SHAPE
from cnncli.data.decode import RESIZE_MODES
from cnncli.errors import CheckpointError


BEST_FIRST = ("best.npz", "last.npz")     # what eval, predict, info, export and init_from take of a run folder


def run_checkpoint(path, names=("last.npz",)) -> Path:
    """A checkpoint file as given, or a run folder's first existing file of `names`. --resume uses
    last.npz; eval/predict prefer best.npz. A missing file is reported by checkpoint.load."""
    p = Path(path)
    if p.is_dir():
        for name in names:
            if (p / name).is_file():
                return p / name
        hint = "; it is a cnn cv folder: give one of its fold-k runs" if (p / "fold-1").is_dir() else ""
        if not hint and not (p / "config.yaml").is_file() and _has_subfolder(p):
            hint = " (it holds folders, no run's files: a data folder? give a run folder or a .npz file)"
        elif not hint and (p / "config.yaml").is_file() and not any((p / n).is_file() for n in BEST_FIRST):
            from cnncli.runfolder import read_diverged
            from cnncli.runlock import holder, training_now

            if training_now(p):                  # (its first run still decodes or compiles: no save yet)
                raise CheckpointError(f"{p}: run folder has no {' or '.join(names)} yet: {holder(p)} is starting "
                                      "this run now (it saves after its first steps)")

            diverged = (read_diverged(p) or "").split(";")[0]   # (the run's loss became non-finite, and where)
            hint = (f": its run diverged before its first save ({diverged}); start it again at a lower optim.lr: "
                    f"cnn train --config {p / 'config.yaml'} --set optim.lr=..." if diverged else
                    f": its run stopped before its first save (nothing trained to go on from); start it again: "
                    f"cnn train --config {p / 'config.yaml'}")
        raise CheckpointError(f"{p}: run folder has no {' or '.join(names)}{hint}")
    return p


def _has_subfolder(folder: Path) -> bool:
    """Whether the folder holds a folder (False when it cannot be listed)."""
    try:
        with os.scandir(folder) as it:
            return any(e.is_dir() for e in it)
    except OSError:
        return False


def _require(meta: dict, key: str, kind, path) -> object:
    if key not in meta:
        raise CheckpointError(f"{path}: checkpoint metadata lacks '{key}'")
    value = meta[key]
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: checkpoint metadata '{key}' has the wrong type ({type(value).__name__})")
    return value


def check_architecture(arrays: dict, meta: dict, path) -> tuple:
    """Check a loaded checkpoint's architecture metadata and every `params/` and `buffers/` key,
    shape and dtype against cnncli.arch (no numba), and that every value is finite
    -> (num_classes, batchnorm, eps, dtype)."""
    num_classes = _require(meta, "num_classes", int, path)
    batchnorm = _require(meta, "batchnorm", str, path)
    eps = float(_require(meta, "eps", (int, float), path))
    dtype_name = _require(meta, "dtype", str, path)
    if batchnorm not in arch.BATCHNORM:
        raise CheckpointError(f"{path}: checkpoint metadata 'batchnorm' is {batchnorm!r}, not one of {arch.BATCHNORM}")
    if dtype_name not in ("float32", "float64"):
        raise CheckpointError(f"{path}: checkpoint metadata 'dtype' is {dtype_name!r}, not float32/float64")
    if num_classes < 2:
        raise CheckpointError(f"{path}: checkpoint metadata 'num_classes' is {num_classes}, need >= 2")
    dtype = np.dtype(dtype_name)
    expected = {}
    for name, shape in arch.param_specs(num_classes, batchnorm):
        expected[f"params/{name}"] = (tuple(shape), dtype)
    for name, shape in arch.buffer_specs(num_classes, batchnorm):
        expected[f"buffers/{name}"] = (tuple(shape), dtype)
    subset = {k: v for k, v in arrays.items() if k.startswith(("params/", "buffers/"))}
    checkpoint.check_arrays(subset, expected, path)
    for key, a in subset.items():
        if not np.isfinite(a).all():
            raise CheckpointError(f"{path}: array {key!r} holds {int((~np.isfinite(a)).sum())} non-finite "
                                  "value(s) (NaN or inf); refusing a broken checkpoint")
        if key.endswith(".running_var") and (a < 0).any():    # (its sqrt: NaN outputs)
            raise CheckpointError(f"{path}: array {key!r} holds {int((a < 0).sum())} negative variance(s); "
                                  "refusing a broken checkpoint")
    return num_classes, batchnorm, eps, dtype


def load_into(net, arrays: dict) -> None:
    """Copy a checkpoint's `params/<name>` and `buffers/<name>` arrays into `net` (Network.load_arrays)."""
    net.load_arrays({k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")},
                    {k[len("buffers/"):]: v for k, v in arrays.items() if k.startswith("buffers/")})


def input_table(mean: float, std: float, dtype) -> np.ndarray:
    """(256,) lookup: uint8 pixel value -> normalized network input ((v/255 - mean) / std)."""
    return ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(dtype)


def _named(arrays: dict, prefix: str, specs, dtype) -> arch.Params:
    """The checkpoint arrays `<prefix><name>` for every (name, shape) of specs, copied into one
    contiguous arch.Params buffer."""
    out = arch.allocate(specs, dtype)
    for name, _ in specs:
        out[name][...] = arrays[prefix + name]
    return out


# A predict_proba call on more images than this runs the numba Network (model.py); up to this many it
# runs the NumPy forward (infer.py) and never imports numba. `scripts/bench_startup.py --crossover` at
# a35e9c5 (fresh processes, float32, batchnorm none, 2 cores, median of 5): 4096 images take 0.78 s by
# numba and 0.65 s by NumPy, 8192 images 1.07 s and 1.27 s, so the break-even lies near 5000-6000
# images. numba pays its import and kernel-cache load (~0.7 s) before its first image, then gains per
# image; 4096 keeps a margin below the break-even, since that gain shrinks on a busy machine (it needs
# both cores) and a process that has already loaded numba finds NumPy the slower one.
NUMPY_MAX_IMAGES = 4096


class Predictor:
    """A checkpoint's parameters plus class names and preprocessing; see docs/design.md.

    Small calls run the NumPy forward (infer.py); the numba `network` (model.Network) is built on
    first use only: by a call on more than NUMPY_MAX_IMAGES images, or by reading `.network`."""

    def __init__(self, params: arch.Params, buffers: arch.Params, batchnorm: str, eps: float,
                 classes: list, preprocess: dict, meta: dict):
        self.params = params
        self.buffers = buffers
        self.batchnorm = batchnorm
        self.eps = float(eps)
        self.classes = list(classes)
        self.preprocess = dict(preprocess)
        self.meta = meta
        self._network = None
        self._table = input_table(self.preprocess["mean"], self.preprocess["std"], params.flat.dtype)

    @classmethod
    def from_checkpoint(cls, path) -> "Predictor":
        """A checkpoint file, or a run folder (its best.npz, else last.npz, as the CLI takes it)."""
        path = run_checkpoint(path, BEST_FIRST)
        arrays, meta = checkpoint.load(path)
        num_classes, batchnorm, eps, dtype = check_architecture(arrays, meta, path)
        classes = _require(meta, "classes", list, path)
        if len(classes) != meta["num_classes"] or not all(isinstance(c, str) for c in classes) \
                or len(set(classes)) != len(classes):
            raise CheckpointError(f"{path}: checkpoint metadata 'classes' does not list {meta['num_classes']} "
                                  "distinct names")
        prep = _require(meta, "preprocess", dict, path)
        for key, kind in (("image_size", int), ("resize", str), ("mean", (int, float)), ("std", (int, float))):
            _require(prep, key, kind, f"{path}: preprocess")
        if not prep["std"] > 0:
            raise CheckpointError(f"{path}: checkpoint metadata 'preprocess.std' must be > 0")
        if prep["image_size"] != IMAGE_SHAPE[-1]:              # (the network's input is 32x32)
            raise CheckpointError(f"{path}: checkpoint metadata 'preprocess.image_size' is {prep['image_size']}, "
                                  f"but the network takes {IMAGE_SHAPE[-1]}x{IMAGE_SHAPE[-1]} images")
        if prep["resize"] not in RESIZE_MODES:
            raise CheckpointError(f"{path}: checkpoint metadata 'preprocess.resize' is {prep['resize']!r}, not one "
                                  f"of {', '.join(RESIZE_MODES)}")
        params = _named(arrays, "params/", arch.param_specs(num_classes, batchnorm), dtype)
        buffers = _named(arrays, "buffers/", arch.buffer_specs(num_classes, batchnorm), dtype)
        return cls(params, buffers, batchnorm, eps, classes, prep, meta)

    @property
    def network(self):
        """The numba fast path (model.Network) with these parameters, built (numba imported) on first use.
        Its arrays are the predictor's from then on (`params`, `buffers`): training it further moves the
        predictions of both paths alike."""
        if self._network is None:
            from cnncli import model

            net = model.Network(num_classes=len(self.classes), batchnorm=self.batchnorm, eps=self.eps,
                                dtype=self.params.flat.dtype)
            net.load_arrays(self.params, self.buffers)
            self.params, self.buffers = net.params, net.buffers      # (one copy of the weights, both paths)
            self._network = net
        return self._network

    def _check_images(self, images_u8) -> np.ndarray:
        """images_u8 as a (N,S,S) uint8 array with S the model's input side, else ValueError naming it."""
        if not isinstance(images_u8, np.ndarray):
            raise ValueError(f"images_u8 must be a numpy array (N,{self.size},{self.size}) uint8, got "
                             f"{type(images_u8).__name__}")
        if images_u8.dtype != np.uint8 or images_u8.ndim != 3 or images_u8.shape[1:] != (self.size, self.size):
            raise ValueError(f"images_u8 must be (N,{self.size},{self.size}) uint8 (data.load_image makes an "
                             f"image so), got {images_u8.shape} {images_u8.dtype}")
        return images_u8

    @property
    def size(self) -> int:
        """The side of the square input images (the preprocessing's image_size)."""
        return int(self.preprocess.get("image_size", 32))

    def to_input(self, images_u8: np.ndarray) -> np.ndarray:
        """(N,S,S) uint8 -> (N,1,S,S) normalized float input of the network's dtype."""
        images_u8 = self._check_images(images_u8)
        return self._table[images_u8][:, None, :, :]

    def predict_proba(self, images_u8: np.ndarray, batch_size: int = 256, fast=None) -> np.ndarray:
        """(N,S,S) uint8 -> (N,C) float64 class probabilities (sigmoid outputs), inference mode:
        the network's values (computed in its dtype, float32 from training) widened, so that
        ensembles, metrics and files take them without a cast (Network.predict_proba keeps its dtype).

        fast: None picks by size (the numba network above NUMPY_MAX_IMAGES images, else NumPy);
        True / False force the numba / NumPy path. The two agree to float rounding (~1e-6 relative in
        float32; docs/design.md)."""
        images_u8 = self._check_images(images_u8)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        n = images_u8.shape[0]
        use_numba = n > NUMPY_MAX_IMAGES if fast is None else bool(fast)
        out = np.empty((n, len(self.classes)), dtype=np.float64)  # (N,C)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = self.to_input(images_u8[start:stop])
            if use_numba:
                out[start:stop] = self.network.predict_proba(x)
            else:
                out[start:stop] = infer.predict_proba(self.params, x, self.batchnorm, self.eps, self.buffers)
        return out


def save_model(path, net, classes, mean: float = 0.0, std: float = 1.0, resize: str = "pad") -> Path:
    """Write a model.Network trained from Python as a checkpoint that Predictor.from_checkpoint,
    `cnn predict`, `cnn eval`, `cnn export`, `cnn info` and `--init-from` read (atomically: the file is
    complete or the previous one stays). classes: its C class names, in output order; mean, std: the
    normalization its input had ((pixels / 255 - mean) / std); resize: how files are brought to 32x32.
    It holds no optimizer state nor run history, so `cnn train --resume` does not take it."""
    if not all(hasattr(net, a) for a in ("num_classes", "batchnorm", "params", "buffers")):
        raise ValueError(f"net must be a cnncli.model.Network, got {type(net).__name__}")
    if isinstance(classes, (str, bytes)):
        raise ValueError(f"classes must be a list of {net.num_classes} names, got a string {classes!r}")
    classes = list(classes)
    if len(classes) != net.num_classes or not all(isinstance(c, str) and c for c in classes) \
            or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be {net.num_classes} distinct non-empty names (the network's outputs), "
                         f"got {classes!r}")
    try:
        mean, std = float(mean), float(std)
    except (TypeError, ValueError):
        raise ValueError(f"mean and std must be numbers, got mean={mean!r}, std={std!r}") from None
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ValueError(f"mean and std must be finite and std > 0, got mean={mean}, std={std}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if net.batchnorm != "none" and net.buffers is None:
        raise ValueError("the network keeps no BN running statistics (buffers), which inference needs")
    for group, arrays in (("params", net.params), ("buffers", net.buffers or {})):   # (every reader refuses them)
        bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
        if bad:
            raise ValueError(f"{group} {', '.join(map(repr, bad))} hold NaN or inf (a diverged network?): a "
                             "checkpoint of them would be refused by every reader")
    from cnncli.runfolder import model_part

    checkpoint.save(path, *model_part(net, classes, {"image_size": IMAGE_SHAPE[-1], "resize": resize,
                                                     "mean": mean, "std": std}))
    return Path(path)
