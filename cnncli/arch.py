"""Parameter layout of the network: names, shapes, the flat buffer with named views, initialisation.

NumPy only (no numba): `cnn predict` and the checkpoint checks use it without loading the kernels.
It computes nothing about the network's outputs; that is model.py (fast path) and infer.py.
"""

from __future__ import annotations

import math

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
BATCHNORM = ("none", "unit", "channel")
IMAGE_SHAPE = (1, 32, 32)
FC1_UNITS = 65


class Params(dict):
    """name -> ndarray view into `.flat`, a 1-D contiguous buffer holding every tensor in spec order.
    Assigning to a name copies the values into its view (the optimizer and checkpoints work on
    `.flat`: a new array in its place would be trained by no one); a new name cannot be added."""

    flat: np.ndarray

    def __setitem__(self, name, value):
        if "flat" not in vars(self):                 # (views() filling it in)
            return super().__setitem__(name, value)
        if name not in self:
            raise KeyError(f"{name!r} is not a parameter of this network (it has {', '.join(self)})")
        view = self[name]
        value = np.asarray(value)
        if value.shape != view.shape:
            raise ValueError(f"params[{name!r}] has shape {view.shape}, got {value.shape}")
        view[...] = value

    def copy(self) -> "Params":
        return views(self.flat.copy(), [(k, v.shape) for k, v in self.items()])

    def __reduce__(self):
        # pickle and copy.deepcopy rebuild the named views on the new `.flat` (as a dict they came back
        # as separate arrays: the optimizer stepped `.flat` and the network read the stale names)
        return views, (self.flat, [(k, v.shape) for k, v in self.items()])


def check_batchnorm(batchnorm):
    if batchnorm not in BATCHNORM:
        raise ValueError(f"batchnorm must be one of {BATCHNORM}, got {batchnorm!r}")


def check_num_classes(num_classes):
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (a classifier tells classes apart; "
                         f"checkpoints and data folders need 2 or more), got {num_classes!r}")


def check_seed(seed, name="seed"):
    """A seed: an integer >= 0 (numpy's generators take no other)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {seed!r}")
    return int(seed)


def check_bn_settings(eps, momentum):
    """BN's eps (a positive number) and running-statistics momentum (a number in [0, 1]); numpy
    scalars are numbers too."""
    real = (int, float, np.integer, np.floating)
    if isinstance(eps, bool) or not isinstance(eps, real) or not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, real) or not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")


def check_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def param_specs(num_classes=12, batchnorm="none"):
    """[(name, shape)] of every parameter tensor, in the order of the flat buffer."""
    check_num_classes(num_classes)
    check_batchnorm(batchnorm)
    bn = {"unit": [(6, 32, 32), (16, 16, 16), (FC1_UNITS,)],
          "channel": [(6,), (16,), (FC1_UNITS,)]}.get(batchnorm)
    specs = [("conv1.w", (6, 1, 5, 5)), ("conv1.b", (6,))]
    if bn:
        specs += [("bn1.gamma", bn[0]), ("bn1.beta", bn[0])]
    specs += [("conv2.w", (16, 6, 5, 5)), ("conv2.b", (16,))]
    if bn:
        specs += [("bn2.gamma", bn[1]), ("bn2.beta", bn[1])]
    specs += [("fc1.w", (FC1_UNITS, 1024)), ("fc1.b", (FC1_UNITS,))]
    if bn:
        specs += [("bn3.gamma", bn[2]), ("bn3.beta", bn[2])]
    specs += [("fc2.w", (num_classes, FC1_UNITS)), ("fc2.b", (num_classes,))]
    return specs


def buffer_specs(num_classes=12, batchnorm="none"):
    """[(name, shape)] of the BN running statistics (empty for "none")."""
    specs = []
    for name, shape in param_specs(num_classes, batchnorm):
        if name.endswith(".gamma"):
            layer = name.split(".")[0]
            specs += [(f"{layer}.running_mean", shape), (f"{layer}.running_var", shape)]
    return specs


def spans(specs) -> dict:
    """name -> (start, stop): where each tensor of specs lies in the flat buffer (spec order)."""
    out, off = {}, 0
    for name, shape in specs:
        size = math.prod(shape)
        out[name] = (off, off + size)
        off += size
    return out


def views(flat, specs) -> Params:
    """A Params whose named views are slices of the 1-D buffer flat, laid out as specs says."""
    p = Params()
    for (name, shape), (start, stop) in zip(specs, spans(specs).values()):
        p[name] = flat[start:stop].reshape(shape)
    p.flat = flat
    return p


def allocate(specs, dtype=np.float32) -> Params:
    """Zeros for every (name, shape) in specs, as views into one flat contiguous buffer."""
    dt = check_dtype(dtype)
    return views(np.zeros(sum(math.prod(shape) for _, shape in specs), dtype=dt), specs)


def init_params(num_classes=12, batchnorm="none", seed=0, dtype=np.float32) -> Params:
    """Glorot-uniform weights (Keras default: fans include the receptive field), zero biases,
    gamma = 1, beta = 0. Deterministic in `seed`."""
    p = allocate(param_specs(num_classes, batchnorm), dtype)
    rng = np.random.default_rng(check_seed(seed))
    for name, arr in p.items():
        kind = name.split(".")[1]
        if kind == "w":
            if arr.ndim == 4:        # (F,C,K,K)
                rf = arr.shape[2] * arr.shape[3]
                fan_in, fan_out = arr.shape[1] * rf, arr.shape[0] * rf
            else:                    # (O,I)
                fan_in, fan_out = arr.shape[1], arr.shape[0]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            arr[...] = rng.uniform(-limit, limit, size=arr.shape)
        elif kind == "gamma":
            arr[...] = 1
        # biases and beta stay zero
    return p


def init_buffers(num_classes=12, batchnorm="none", dtype=np.float32) -> Params:
    """BN running statistics: mean 0, var 1 (PyTorch's initial values)."""
    b = allocate(buffer_specs(num_classes, batchnorm), dtype)
    for name, arr in b.items():
        if name.endswith("running_var"):
            arr[...] = 1
    return b


def infer_architecture(params) -> tuple:
    """(num_classes, batchnorm) from the keys and shapes of a params mapping; ValueError if it fits none."""
    if "fc2.b" not in params:
        raise ValueError("params has no 'fc2.b': cannot tell the number of classes")
    num_classes = int(np.shape(params["fc2.b"])[0]) if np.ndim(params["fc2.b"]) == 1 else 0
    if num_classes < 2:
        raise ValueError(f"params['fc2.b'] has shape {np.shape(params['fc2.b'])}, expected (C,) with C >= 2 classes")
    if "bn1.gamma" not in params:
        batchnorm = "none"
    else:
        batchnorm = "channel" if np.shape(params["bn1.gamma"]) == (6,) else "unit"
    specs = param_specs(num_classes, batchnorm)
    names = {n for n, _ in specs}
    extra = sorted(set(params) - names)
    if extra:
        raise ValueError(f"params has unexpected key {extra[0]!r} for batchnorm={batchnorm!r}")
    for name, shape in specs:
        if name not in params:
            raise ValueError(f"params is missing {name!r} (batchnorm={batchnorm!r})")
        if tuple(np.shape(params[name])) != tuple(shape):
            raise ValueError(f"params[{name!r}] has shape {np.shape(params[name])}, expected {shape}")
    return num_classes, batchnorm
