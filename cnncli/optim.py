"""Optimizers on one flat parameter buffer (torch.optim's SGD, momentum, Nesterov, Adam, AdamW), and
learning-rate schedules as pure functions. Not a general optimizer framework: no parameter groups,
no closures, no schedule inside (the lr given at construction is step()'s default; a schedule passes
each step its own).
"""

# Update rules follow torch.optim (SGD, momentum, Nesterov, Adam, AdamW) exactly; `step` works in
# place with preallocated scratch and allocates nothing. Adam/AdamW run as one fused numba pass
# (kernels/adam.py, imported on first use), bitwise equal to the NumPy sequence kept beside it.

import math

import numpy as np

from .errors import CheckpointError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "plateau")

# which state arrays each optimizer keeps (besides the step counter "optim.t")
_STATE_KEYS = {
    "sgd": (),
    "momentum": ("optim.m",),
    "nesterov": ("optim.m",),
    "adam": ("optim.m", "optim.v"),
    "adamw": ("optim.m", "optim.v"),
}


def _rate(name: str, value) -> float:
    """A learning rate or weight decay as a float: a finite number >= 0, else ValueError naming it
    (a NaN turned every parameter into NaN at the first step)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number >= 0, got {value!r}") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
    return value


class Optimizer:
    """One optimizer over a flat buffer of `size` parameters of `dtype`.

    State: "optim.m" (momentum buffer / Adam first moment, (P,)), "optim.v" (Adam second moment,
    (P,)), "optim.t" (number of steps taken, int64 (1,)).
    """

    def __init__(self, name, size, lr, momentum=0.9, weight_decay=0.0, betas=(0.9, 0.999),
                 eps=1e-8, dtype=np.float32):
        if name not in OPTIMIZERS:
            raise ValueError(f"name: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"size: must be an integer >= 0 (params.flat.size), got {size!r}")
        size = int(size)
        lr = _rate("lr", lr)
        momentum = _rate("momentum", momentum)
        if not momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {momentum}")
        weight_decay = _rate("weight_decay", weight_decay)
        try:
            beta1, beta2 = (_rate("betas", b) for b in betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas: must be two numbers in [0, 1), got {betas!r}") from None
        if not (beta1 < 1.0 and beta2 < 1.0):
            raise ValueError(f"betas: each must be in [0, 1), got {tuple(betas)}")
        eps = _rate("eps", eps)
        if eps <= 0.0:
            raise ValueError(f"eps: must be > 0, got {eps}")
        self.name = name
        self.size = size
        self.lr = lr  # the default of step()'s lr
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.betas = (beta1, beta2)
        self.eps = float(eps)
        self.dtype = np.dtype(dtype)
        self.t = 0
        self.m = np.zeros(size, self.dtype) if "optim.m" in _STATE_KEYS[name] else None  # (P,)
        self.v = np.zeros(size, self.dtype) if "optim.v" in _STATE_KEYS[name] else None  # (P,)
        # (P,) scratch of the NumPy updates; Adam's fused kernel needs none (_adam_numpy makes its own)
        adam = name in ("adam", "adamw")
        self._s1 = None if adam else np.empty(size, self.dtype)
        self._s2 = None if (adam or name == "sgd") else np.empty(size, self.dtype)

    # -- the update -------------------------------------------------------------------------
    def step(self, params_flat, grads_flat, lr=None) -> None:
        """Update `params_flat` (P,) in place from `grads_flat` (P,); `grads_flat` is not modified."""
        self._check_buffer("params_flat", params_flat)
        self._check_buffer("grads_flat", grads_flat)
        if not params_flat.flags.writeable:
            raise ValueError("params_flat is read-only: step updates it in place (give a writable copy)")
        lr = self.lr if lr is None else _rate("lr", lr)
        self.t += 1
        if self.name in ("adam", "adamw"):
            self._adam(params_flat, grads_flat, lr)
        else:
            self._sgd(params_flat, grads_flat, lr)

    def _sgd(self, p, g, lr):
        s1, s2, m = self._s1, self._s2, self.m
        wd, mu = self.weight_decay, self.momentum
        if wd != 0.0:  # torch: d_p = grad + wd * param
            np.multiply(p, wd, out=s1)
            np.add(g, s1, out=s1)
            g = s1
        update = g
        if self.name in ("momentum", "nesterov") and mu != 0.0:
            if self.t == 1:  # torch: buf = clone(d_p) on the first step
                np.copyto(m, g)
            else:  # torch: buf = mu * buf + d_p
                np.multiply(m, mu, out=m)
                np.add(m, g, out=m)
            update = m
            if self.name == "nesterov":  # torch: d_p = d_p + mu * buf
                np.multiply(m, mu, out=s2)
                np.add(g, s2, out=s2)
                update = s2
        out = s2 if update is s2 else s1  # never scale the grads or the momentum buffer in place
        np.multiply(update, -lr, out=out)  # torch: param.add_(d_p, alpha=-lr)
        np.add(p, out, out=p)

    def _adam(self, p, g, lr):
        """One fused pass (kernels.adam.adam_step_into); the same bits as _adam_numpy, which the tests compare."""
        from .kernels.adam import adam_step_into

        beta1, beta2 = self.betas
        wd = self.weight_decay
        t = self.dtype.type
        decay = 1.0 - lr * wd if (self.name == "adamw" and wd != 0.0) else 1.0
        l2 = wd if self.name == "adam" else 0.0
        step_size = lr / (1.0 - beta1 ** self.t)
        bias2_sqrt = math.sqrt(1.0 - beta2 ** self.t)
        adam_step_into(p, g, self.m, self.v, t(decay), t(l2), t(1.0 - beta1), t(1.0 - beta2), t(beta2),
                       t(bias2_sqrt), t(self.eps), t(-step_size))

    def _adam_numpy(self, p, g, lr):
        """The reference: Adam/AdamW as NumPy passes over the flat buffers (what _adam must equal)."""
        s1, s2, m, v = np.empty_like(p), np.empty_like(p), self.m, self.v
        beta1, beta2 = self.betas
        wd = self.weight_decay
        if self.name == "adamw" and wd != 0.0:  # torch AdamW: param *= 1 - lr * wd (decoupled)
            np.multiply(p, 1.0 - lr * wd, out=p)
        elif self.name == "adam" and wd != 0.0:  # torch Adam: grad = grad + wd * param (L2)
            np.multiply(p, wd, out=s1)
            np.add(g, s1, out=s1)
            g = s1
        # torch: exp_avg.lerp_(grad, 1 - beta1)  ==  m + (1 - beta1) * (g - m)
        np.subtract(g, m, out=s2)
        np.multiply(s2, 1.0 - beta1, out=s2)
        np.add(m, s2, out=m)
        # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        np.multiply(g, g, out=s2)
        np.multiply(s2, 1.0 - beta2, out=s2)
        np.multiply(v, beta2, out=v)
        np.add(v, s2, out=v)
        bias1 = 1.0 - beta1 ** self.t
        bias2_sqrt = math.sqrt(1.0 - beta2 ** self.t)
        step_size = lr / bias1
        # torch: denom = sqrt(v) / sqrt(bias2) + eps;  param -= step_size * m / denom
        np.sqrt(v, out=s2)
        np.divide(s2, bias2_sqrt, out=s2)
        np.add(s2, self.eps, out=s2)
        np.divide(m, s2, out=s2)
        np.multiply(s2, -step_size, out=s2)
        np.add(p, s2, out=p)

    def _check_buffer(self, arg, a):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.shape[0] != self.size:
            shape = getattr(a, "shape", type(a).__name__)
            raise ValueError(f"{arg}: expected a 1-D array of shape ({self.size},), got {shape}")
        if a.dtype != self.dtype:
            raise ValueError(f"{arg}: expected dtype {self.dtype}, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{arg}: must be C-contiguous")

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Copies of the state arrays: {"optim.m": (P,), "optim.v": (P,), "optim.t": int64 (1,)}."""
        d = {"optim.t": np.array([self.t], dtype=np.int64)}
        if self.m is not None:
            d["optim.m"] = self.m.copy()
        if self.v is not None:
            d["optim.v"] = self.v.copy()
        return d

    def expected_state(self) -> dict:
        """name -> (shape, dtype) of every array `state_dict` returns (for checkpoint.check_arrays)."""
        exp = {"optim.t": ((1,), np.dtype(np.int64))}
        for key in _STATE_KEYS[self.name]:
            exp[key] = ((self.size,), self.dtype)
        return exp

    def load_state_dict(self, d) -> None:
        """Restore state saved by `state_dict`; CheckpointError naming the key on any mismatch."""
        expected = self.expected_state()
        for key in sorted(set(d) - set(expected)):
            raise CheckpointError(
                f"optimizer state: unexpected key {key!r} (optimizer {self.name!r} keeps "
                f"{', '.join(sorted(expected))})")
        for key, (shape, dtype) in expected.items():
            if key not in d:
                raise CheckpointError(f"optimizer state: missing key {key!r} for optimizer {self.name!r}")
            a = d[key]
            if not isinstance(a, np.ndarray):
                raise CheckpointError(f"optimizer state: {key!r} is {type(a).__name__}, expected an array")
            if a.shape != shape:
                raise CheckpointError(f"optimizer state: {key!r} has shape {a.shape}, expected {shape}")
            if a.dtype != dtype:
                raise CheckpointError(f"optimizer state: {key!r} has dtype {a.dtype}, expected {dtype}")
        t = int(d["optim.t"][0])
        if t < 0:
            raise CheckpointError(f"optimizer state: 'optim.t' is {t}, expected >= 0")
        self.t = t
        if self.m is not None:
            np.copyto(self.m, d["optim.m"])
        if self.v is not None:
            np.copyto(self.v, d["optim.v"])


def lr_at(step, steps_per_epoch, epochs, base_lr, schedule="constant", warmup_epochs=0.0,
          step_size=10, gamma=0.1, min_lr=0.0, drops=0) -> float:
    """Learning rate for global step `step` (0-based): a pure function, so resuming is exact.

    Linear warmup from base_lr/W to base_lr over W = round(warmup_epochs * steps_per_epoch)
    steps, then: constant; step (times gamma every `step_size` epochs, by epoch index); cosine
    (base_lr at the end of warmup, min_lr at step steps_per_epoch * epochs, the step after the last);
    or plateau (base_lr times gamma per drop so far, `drops` from earlystop.plateau_drops, not below
    min_lr: Keras' ReduceLROnPlateau).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: must be >= 1, got {steps_per_epoch}")
    if step < 0:
        raise ValueError(f"step: must be >= 0, got {step}")
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if schedule == "constant":
        lr = base_lr
    elif schedule == "step":
        if step_size < 1:
            raise ValueError(f"step_size: must be >= 1, got {step_size}")
        epoch = step // steps_per_epoch
        lr = base_lr * gamma ** (epoch // step_size)
    elif schedule == "plateau":
        lr = max(base_lr * gamma ** drops, min_lr) if drops else base_lr
    else:  # cosine over the steps after warmup (torch CosineAnnealingLR, T_max = those steps)
        total = max(1, steps_per_epoch * epochs - warmup)
        progress = min(1.0, max(0.0, (step - warmup) / total))
        lr = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if step < warmup:
        lr = lr * (step + 1) / warmup
    return float(lr)
